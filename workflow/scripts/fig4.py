"""Rule fig4: PCA panels and teleportation (paper Fig. 4)."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "fig4")  # noqa: F821

    from rsdyn.geometry.figure import save_fig4  # noqa: E402

    save_fig4(
        snakemake.input.pca,  # noqa: F821
        snakemake.input.teleport,  # noqa: F821
        snakemake.output.pdf,  # noqa: F821
        snakemake.output.png,  # noqa: F821
        arrow_sublayers=snakemake.params.arrow_sublayers,  # noqa: F821
        dpi=snakemake.params.dpi,  # noqa: F821
        summary_path=snakemake.input.summary,  # noqa: F821
    )
