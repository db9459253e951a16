"""Rule controls: every judged claim of a run read against its control runs -> compare/controls.{md,json}."""

from rsdyn.core.jobs import setup_job
from rsdyn.report.controls import run_controls

setup_job(snakemake.log[0], "controls")  # noqa: F821
run_controls(
    snakemake.params.runs,  # noqa: F821
    list(snakemake.input.summary),  # noqa: F821
    list(snakemake.input.samples),  # noqa: F821
    snakemake.params.controls,  # noqa: F821
    snakemake.input.claims,  # noqa: F821
    snakemake.output.markdown,  # noqa: F821
    snakemake.output.json,  # noqa: F821
)
