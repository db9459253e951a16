"""Rule model: convert the configured weights once to a safetensors directory."""

from rsdyn.core.jobs import setup_job
from rsdyn.models.weights import convert_model

log = setup_job(snakemake.log[0])  # noqa: F821
log.info("converting model %s", snakemake.params.settings)  # noqa: F821
convert_model(snakemake.params.settings, snakemake.output[0])  # noqa: F821
log.info("wrote %s", snakemake.output[0])  # noqa: F821
