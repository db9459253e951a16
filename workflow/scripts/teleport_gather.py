"""Rule teleport_gather: the per-layer stores -> teleport.zarr (one group layer_{l} each)."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    from rsdyn.core.jobs import setup_job

    setup_job(snakemake.log[0], "teleport_gather")  # noqa: F821

    from rsdyn.geometry.run import run_teleport_gather  # noqa: E402

    run_teleport_gather(
        dict(zip(snakemake.params.layers, snakemake.input)),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        snakemake.params.arrow_sublayers,  # noqa: F821
    )
