"""Rule summary: summary.json, its table, and the run's resolved configuration."""

from rsdyn.core.jobs import setup_job
from rsdyn.report.summary import run_summary

setup_job(snakemake.log[0])  # noqa: F821
run_summary(snakemake.params.run, snakemake.input, snakemake.output, snakemake.params.settings, snakemake.threads)  # noqa: F821
