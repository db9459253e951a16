"""Rule teleport_layer: the grid teleported into one layer -> teleport/layer_{l}.zarr."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "teleport_layer")  # noqa: F821

    from rsdyn.geometry.run import run_teleport_layer  # noqa: E402

    run_teleport_layer(
        snakemake.input.model,  # noqa: F821
        snakemake.input.pca,  # noqa: F821
        snakemake.input.activations,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        snakemake.params.settings,  # noqa: F821
        snakemake.params.layer,  # noqa: F821
        snakemake.params.family,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
