"""Rule compare: the runs side by side -> compare/summary.tsv, across_models.md, fig_compare."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "compare")  # noqa: F821

    from rsdyn.report.compare import run_compare  # noqa: E402

    kinds = ("summary", "layer_stats", "unit_stats", "pca", "teleport", "jacobian")
    run_compare(
        snakemake.params.runs,  # noqa: F821
        {kind: list(snakemake.input[kind]) for kind in kinds},  # noqa: F821
        snakemake.output.table,  # noqa: F821
        snakemake.output.pdf,  # noqa: F821
        snakemake.output.png,  # noqa: F821
        snakemake.output.markdown,  # noqa: F821
        dpi=snakemake.params.dpi,  # noqa: F821
    )
