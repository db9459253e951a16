"""Rule unit_stats_shard: every per-unit quantity of one unit range, both conditions."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.units.run import run_unit_stats_shard

    setup_job(snakemake.log[0])  # noqa: F821
    run_unit_stats_shard(snakemake.input[0], snakemake.output[0], snakemake.params.settings, int(snakemake.wildcards.shard))  # noqa: F821
