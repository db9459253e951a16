"""Rule jacobian: sublayer Jacobians, their spectra and the cumulative product -> jacobian.zarr."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared, loaded machine spinning made
# 2-thread Jacobians 10x slower than 1 thread (64 s vs 6.6 s for 12 transitions).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from rsdyn.jobs import setup_job  # noqa: E402

log = setup_job(snakemake.log[0], "jacobian")  # noqa: F821

from rsdyn.jacobian import run_jacobian  # noqa: E402
from rsdyn.store import write_group  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
arrays, attrs = run_jacobian(
    snakemake.input.model,  # noqa: F821
    snakemake.input.activations,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    snakemake.params.family,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
write_group(snakemake.output[0], arrays, attrs=attrs)  # noqa: F821
log.info("wrote %s (%s weights)", snakemake.output[0], ", ".join(attrs["weights"]))  # noqa: F821
