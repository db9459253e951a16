"""Rule teleport_gather: the per-layer stores -> teleport.zarr (one group layer_{l} each)."""

from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0], "teleport_gather")  # noqa: F821

from rsdyn.store import write_group  # noqa: E402
from rsdyn.teleport import gather_attrs, gather_layers  # noqa: E402

paths = dict(zip(snakemake.params.layers, snakemake.input))  # noqa: F821
write_group(snakemake.output[0], gather_layers(paths), attrs=gather_attrs(paths))  # noqa: F821
log.info("gathered layers %s", sorted(paths))
