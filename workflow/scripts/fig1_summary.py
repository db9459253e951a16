"""Rule fig1_summary: the Fig. 1 rows with bootstrap intervals over sequences (summary_fig1.json)."""

from rsdyn.jobs import setup_job
from rsdyn.summary import build_summary, fig1_rows, write_summary

log = setup_job(snakemake.log[0])
settings = snakemake.params.summary
rows = fig1_rows(
    snakemake.input.activations,
    snakemake.input.unit_stats,
    snakemake.input.layer_stats,
    bootstrap=settings["bootstrap"],
    seed=settings["seed"],
    density_threshold=snakemake.params.density_threshold,
)
write_summary(build_summary(snakemake.params.run, snakemake.input.activations, rows, settings), snakemake.output[0])
log.info("wrote %d Fig. 1 rows (%d with a verdict)", len(rows), sum(1 for row in rows.values() if row.get("verdict")))
