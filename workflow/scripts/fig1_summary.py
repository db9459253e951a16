"""Rule fig1_summary: the Fig. 1 rows with bootstrap intervals over sequences (summary_fig1.json)."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.report.summary import run_fig1_summary

    setup_job(snakemake.log[0])  # noqa: F821
    run_fig1_summary(
        snakemake.params.run,  # noqa: F821
        snakemake.input.activations,  # noqa: F821
        snakemake.input.unit_stats,  # noqa: F821
        snakemake.input.layer_stats,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        snakemake.params.summary,  # noqa: F821
        snakemake.params.density_threshold,  # noqa: F821
    )
