"""Rule compare: the runs side by side -> compare/summary.tsv, across_models.md, fig_compare."""

from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0], "compare")  # noqa: F821

from rsdyn.compare import run_compare, verdict_counts  # noqa: E402

kinds = ("summary", "layer_stats", "unit_stats", "pca", "teleport", "jacobian")
summaries = run_compare(
    snakemake.params.runs,  # noqa: F821
    {kind: list(snakemake.input[kind]) for kind in kinds},  # noqa: F821
    snakemake.output.table,  # noqa: F821
    snakemake.output.pdf,  # noqa: F821
    snakemake.output.png,  # noqa: F821
    snakemake.output.markdown,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
)
log.info("verdicts per run: %s", verdict_counts(summaries))
