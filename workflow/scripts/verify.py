"""Rule verify: check every run and model against their checksums; delete what is damaged."""

from rsdyn.core.jobs import setup_job
from rsdyn.verify import verify_workflow

setup_job(None, "verify")
verify_workflow(snakemake.params.paths, snakemake.params.resources)  # noqa: F821
