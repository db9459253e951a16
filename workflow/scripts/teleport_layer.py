"""Rule teleport_layer: the grid teleported into one layer -> teleport/layer_{l}.zarr."""

import torch

from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0], "teleport_layer")  # noqa: F821

from rsdyn.store import write_group  # noqa: E402
from rsdyn.teleport import run_teleport_layer  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
arrays, attrs = run_teleport_layer(
    snakemake.input.model,  # noqa: F821
    snakemake.input.pca,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    snakemake.params.layer,  # noqa: F821
    snakemake.params.family,  # noqa: F821
    snakemake.input.activations,  # noqa: F821
)
write_group(snakemake.output[0], arrays, attrs=attrs)  # noqa: F821
log.info("layer %d: %d grid trajectories written", snakemake.params.layer, len(arrays["trajectories"]))  # noqa: F821
