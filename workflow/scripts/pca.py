"""Rule pca: PCA of the pooled sublayer states -> pca.zarr."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "pca")  # noqa: F821

    from rsdyn.geometry.run import run_pca  # noqa: E402

    run_pca(snakemake.input[0], snakemake.output[0], snakemake.params.settings, snakemake.params.bootstrap, snakemake.params.seed)  # noqa: F821
