"""Rule teleport_gather: the per-layer stores -> teleport.zarr (one group layer_{l} each)."""

from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0], "teleport_gather")  # noqa: F821

import numpy as np  # noqa: E402

from rsdyn.store import write_group  # noqa: E402
from rsdyn.teleport import gather_attrs, gather_layers  # noqa: E402

paths = dict(zip(snakemake.params.layers, snakemake.input))  # noqa: F821
arrays = gather_layers(paths, snakemake.params.arrow_sublayers)  # noqa: F821
write_group(snakemake.output[0], arrays, attrs=gather_attrs(paths))  # noqa: F821
for name, group in arrays.items():
    log.info("%s: horizon %d, median distance ratio %.3g", name, group["horizon"], float(np.nanmedian(group["distance_ratio"])))
