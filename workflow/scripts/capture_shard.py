"""Rule capture_shard: one contiguous sample range of both conditions, streamed into a shard store."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.capture.run import capture_store
    from rsdyn.core.jobs import setup_job

    log = setup_job(snakemake.log[0])  # noqa: F821
    capture_store(
        model_dir=snakemake.input.model,  # noqa: F821
        corpus_path=snakemake.input.corpus,  # noqa: F821
        out_path=snakemake.output[0],  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        model_settings=snakemake.params.model,  # noqa: F821
        shard=snakemake.params.shard,  # noqa: F821
        conditions=snakemake.params.conditions,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
    log.info("wrote %s", snakemake.output[0])  # noqa: F821
