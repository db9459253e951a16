"""Rule fig1_summary: the Fig. 1 rows with bootstrap intervals over sequences (summary_fig1.json)."""

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
