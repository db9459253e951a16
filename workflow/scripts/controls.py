"""Rule controls: every judged claim of a run read against its control runs -> compare/controls.{md,json}."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
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
