"""Rule fig2: rotations of single units against their nulls, and population rotations (jPCA)."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.population.figure import save_fig2

    log = setup_job(snakemake.log[0])  # noqa: F821
    save_fig2(
        snakemake.input.unit_stats,  # noqa: F821
        snakemake.input.population,  # noqa: F821
        snakemake.output.pdf,  # noqa: F821
        snakemake.output.png,  # noqa: F821
        n_example_units=snakemake.params.settings["n_example_units"],  # noqa: F821
        dpi=snakemake.params.settings["dpi"],  # noqa: F821
        model=snakemake.wildcards.run,  # noqa: F821
        summary_path=snakemake.input.summary,  # noqa: F821
    )
    log.info("wrote %s, %s", snakemake.output.pdf, snakemake.output.png)  # noqa: F821
