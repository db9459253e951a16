"""Rule fig3: the compressing autoencoder figure (paper Fig. 3)."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "fig3")  # noqa: F821

    from rsdyn.cae.figure import save_fig3  # noqa: E402

    save_fig3(
        snakemake.input.cae,  # noqa: F821
        snakemake.output.pdf,  # noqa: F821
        snakemake.output.png,  # noqa: F821
        dpi=snakemake.params.settings["dpi"],  # noqa: F821
        summary_path=snakemake.input.summary,  # noqa: F821
    )
