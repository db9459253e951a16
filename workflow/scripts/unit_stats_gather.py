"""Rule unit_stats_gather: join the shard stores into unit_stats.zarr."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.units.run import run_unit_stats_gather

    setup_job(snakemake.log[0])  # noqa: F821
    run_unit_stats_gather(list(snakemake.input), snakemake.output[0])  # noqa: F821
