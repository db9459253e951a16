"""Rule capture: assemble the shard stores into one activation store (hard links, no copy)."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.capture.run import assemble_store
    from rsdyn.core.jobs import setup_job

    log = setup_job(snakemake.log[0])  # noqa: F821
    assemble_store(
        shard_paths=snakemake.input.shards,  # noqa: F821
        corpus_path=snakemake.input.corpus,  # noqa: F821
        out_path=snakemake.output[0],  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        model_settings=snakemake.params.model,  # noqa: F821
        corpus_settings=snakemake.params.corpus,  # noqa: F821
    )
    log.info("assembled %d shard(s) into %s", len(snakemake.input.shards), snakemake.output[0])  # noqa: F821
