"""Rule population: jPCA and its TME null, and per-unit R against TME -> population.zarr."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "population")  # noqa: F821

    from rsdyn.population.run import run_population  # noqa: E402

    params = snakemake.params  # noqa: F821
    run_population(snakemake.input[0], snakemake.output[0], params.jpca, params.tme, params.fdr_q)  # noqa: F821
