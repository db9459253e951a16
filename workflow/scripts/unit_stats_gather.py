"""Rule unit_stats_gather: join the shard stores into unit_stats.zarr."""

from rsdyn.core.jobs import setup_job
from rsdyn.units.run import run_unit_stats_gather

setup_job(snakemake.log[0])  # noqa: F821
run_unit_stats_gather(list(snakemake.input), snakemake.output[0])  # noqa: F821
