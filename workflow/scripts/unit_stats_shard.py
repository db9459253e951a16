"""Rule unit_stats_shard: every per-unit quantity of one unit range, both conditions."""

from rsdyn.jobs import setup_job
from rsdyn.store import open_group, write_group
from rsdyn.unit_stats import compute_shard, shard_attrs, split_units

log = setup_job(snakemake.log[0])
settings = snakemake.params.settings
n_units = open_group(snakemake.input[0])["original"].shape[2]
unit_start, unit_stop = split_units(n_units, settings["shards"])[int(snakemake.wildcards.shard)]
log.info("shard %s: units %d-%d of %d", snakemake.wildcards.shard, unit_start, unit_stop - 1, n_units)
timings = {}
result = compute_shard(snakemake.input[0], unit_start, unit_stop, settings, timings)
log.info("seconds per quantity: %s", {name: round(value, 2) for name, value in timings.items()})
write_group(snakemake.output[0], result, attrs=shard_attrs(snakemake.input[0], unit_start, unit_stop, settings))
log.info("wrote %s", snakemake.output[0])
