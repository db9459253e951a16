"""Rule capture_shard: one contiguous sample range of both conditions, streamed into a shard store."""

import torch

from rsdyn.capture import capture_store
from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
capture_store(
    model_dir=snakemake.input.model,
    corpus_path=snakemake.input.corpus,
    out_path=snakemake.output[0],
    settings=snakemake.params.settings,
    model_settings=snakemake.params.model,
    shard=snakemake.params.shard,
    conditions=snakemake.params.conditions,
)
log.info("wrote %s", snakemake.output[0])
