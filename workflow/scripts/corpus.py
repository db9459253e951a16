"""Rules corpus and cae_corpus: filtered, subsampled, tokenised texts of both conditions."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.capture.run import run_corpus
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0])  # noqa: F821
    run_corpus(snakemake.input.model, snakemake.params.settings, snakemake.output[0])  # noqa: F821
