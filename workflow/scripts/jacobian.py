"""Rule jacobian: sublayer Jacobians, their spectra and the cumulative product -> jacobian.zarr."""

# Under a main guard: a process spawned by this job (a spawn-context DataLoader or pool)
# imports this file again as __mp_main__ and must not run the rule a second time.
if __name__ == "__main__":
    import os

    # Idle OpenMP threads sleep instead of spinning: on a shared, loaded machine spinning made
    # 2-thread Jacobians 10x slower than 1 thread (64 s vs 6.6 s for 12 transitions).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from rsdyn.core.jobs import setup_job  # noqa: E402

    setup_job(snakemake.log[0], "jacobian")  # noqa: F821

    from rsdyn.jacobian.run import run_jacobian  # noqa: E402

    run_jacobian(
        snakemake.input.model,  # noqa: F821
        snakemake.input.activations,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        snakemake.params.settings,  # noqa: F821
        snakemake.params.family,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
