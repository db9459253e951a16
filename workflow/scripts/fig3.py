"""Rule fig3: the compressing autoencoder figure (paper Fig. 3)."""

from rsdyn.core.jobs import setup_job

setup_job(snakemake.log[0], "fig3")  # noqa: F821

from rsdyn.cae.figure import save_fig3  # noqa: E402

save_fig3(snakemake.input[0], snakemake.output.pdf, snakemake.output.png, dpi=snakemake.params.settings["dpi"])  # noqa: F821
