"""Rule summary: summary.json, its table, and the run's resolved configuration."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.report.summary import run_summary

    setup_job(snakemake.log[0])  # noqa: F821
    run_summary(snakemake.params.run, snakemake.input, snakemake.output, snakemake.params.settings, snakemake.threads)  # noqa: F821
