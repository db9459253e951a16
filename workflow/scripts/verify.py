"""Rule verify: check every run and model against their checksums; delete what is damaged."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.verify import verify_workflow

    setup_job(None, "verify")
    verify_workflow(snakemake.params.paths, snakemake.params.resources)  # noqa: F821
