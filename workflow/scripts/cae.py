"""Rule cae: train the compressing autoencoder (every seed of cae.seeds) and write results/{run}/cae/."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    log = setup_job(snakemake.log[0], "cae")  # noqa: F821

    from rsdyn.cae.run import run_cae  # noqa: E402

    info = run_cae(snakemake.input[0], snakemake.output[0], snakemake.params.settings, threads=snakemake.threads)  # noqa: F821
    log.info(
        "CAE on %s, seeds %s: %d epochs (per seed %s, best %s, early stop %s), %.1f s, test MSE %s",
        info["device"], info["seeds"], info["epochs"], info["epochs_run"], info["best_epoch"], info["stopped_early"],
        info["train_seconds"], [f"{loss:.4g}" for loss in info["test_loss"]],
    )
