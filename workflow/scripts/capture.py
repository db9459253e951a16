"""Rule capture: assemble the shard stores into one activation store (hard links, no copy)."""

from rsdyn.capture import assemble_store
from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0])
assemble_store(
    shard_paths=snakemake.input.shards,
    corpus_path=snakemake.input.corpus,
    out_path=snakemake.output[0],
    settings=snakemake.params.settings,
    model_settings=snakemake.params.model,
    corpus_settings=snakemake.params.corpus,
)
log.info("assembled %d shard(s) into %s", len(snakemake.input.shards), snakemake.output[0])
