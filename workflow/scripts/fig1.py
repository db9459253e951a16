"""Rule fig1: density, continuity, velocity and MI over depth."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.units.figure import save_fig1

    log = setup_job(snakemake.log[0])  # noqa: F821
    save_fig1(
        snakemake.input.unit_stats,  # noqa: F821
        snakemake.input.layer_stats,  # noqa: F821
        snakemake.output.pdf,  # noqa: F821
        snakemake.output.png,  # noqa: F821
        dpi=snakemake.params.settings["dpi"],  # noqa: F821
        model=snakemake.wildcards.run,  # noqa: F821
        summary_path=snakemake.input.summary,  # noqa: F821
    )
    log.info("wrote %s, %s", snakemake.output.pdf, snakemake.output.png)  # noqa: F821
