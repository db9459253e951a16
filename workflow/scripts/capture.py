"""Rule capture: assemble the shard stores into one activation store (hard links, no copy)."""

from rsdyn.capture.run import assemble_store
from rsdyn.core.jobs import setup_job

log = setup_job(snakemake.log[0])  # noqa: F821
assemble_store(
    shard_paths=snakemake.input.shards,  # noqa: F821
    corpus_path=snakemake.input.corpus,  # noqa: F821
    out_path=snakemake.output[0],  # noqa: F821
    settings=snakemake.params.settings,  # noqa: F821
    model_settings=snakemake.params.model,  # noqa: F821
    corpus_settings=snakemake.params.corpus,  # noqa: F821
)
log.info("assembled %d shard(s) into %s", len(snakemake.input.shards), snakemake.output[0])  # noqa: F821
