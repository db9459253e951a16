"""Rule unit_stats_gather: join the shard stores into unit_stats.zarr."""

from rsdyn.jobs import setup_job
from rsdyn.store import write_group
from rsdyn.unit_stats import gather

log = setup_job(snakemake.log[0])
arrays, attrs = gather(list(snakemake.input))
write_group(snakemake.output[0], arrays, attrs=attrs)
log.info("gathered %d shards (%d units) into %s", snakemake.params.shards, len(arrays["units"]), snakemake.output[0])
