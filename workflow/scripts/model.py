"""Rule model: convert the configured weights once to a safetensors directory."""

from rsdyn.jobs import setup_job
from rsdyn.models import convert_model

log = setup_job(snakemake.log[0])
settings = snakemake.params.settings
log.info("converting model %s", settings)
convert_model(settings, snakemake.output[0])
log.info("wrote %s", snakemake.output[0])
