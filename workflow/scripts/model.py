"""Rule model: convert the configured weights once to a safetensors directory."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job
    from rsdyn.models.weights import convert_model

    log = setup_job(snakemake.log[0])  # noqa: F821
    log.info("converting model %s", snakemake.params.settings)  # noqa: F821
    convert_model(snakemake.params.settings, snakemake.output[0])  # noqa: F821
    log.info("wrote %s", snakemake.output[0])  # noqa: F821
