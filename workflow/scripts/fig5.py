"""Rule fig5: spectra of the sublayer Jacobians through depth, trained vs initial weights."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
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
