"""Rules corpus and cae_corpus: filtered, subsampled, tokenised texts of both conditions."""

from rsdyn.capture.run import run_corpus
from rsdyn.core.jobs import setup_job

setup_job(snakemake.log[0])  # noqa: F821
run_corpus(snakemake.input.model, snakemake.params.settings, snakemake.output[0])  # noqa: F821
