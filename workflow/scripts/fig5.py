"""Rule fig5: spectra of the sublayer Jacobians through depth, trained vs initial weights."""

from rsdyn.core.jobs import setup_job

setup_job(snakemake.log[0], "fig5")  # noqa: F821

from rsdyn.jacobian.figure import save_fig5  # noqa: E402

save_fig5(
    snakemake.input.jacobian,  # noqa: F821
    snakemake.output.pdf,  # noqa: F821
    snakemake.output.png,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
    summary_path=snakemake.input.summary,  # noqa: F821
)
