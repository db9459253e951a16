"""Rule cae: train the compressing autoencoder and write results/{run}/cae/."""

from rsdyn.core.jobs import setup_job

log = setup_job(snakemake.log[0], "cae")  # noqa: F821

from rsdyn.cae.run import run_cae  # noqa: E402

info = run_cae(snakemake.input[0], snakemake.output[0], snakemake.params.settings, threads=snakemake.threads)  # noqa: F821
log.info(
    "CAE on %s: %d epochs (best %d, early stop %s), %.1f s, test MSE %.4g",
    info["device"], info["epochs_run"], info["best_epoch"], info["stopped_early"], info["train_seconds"], info["test_loss"],
)
