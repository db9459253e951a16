"""Rule corpus: filtered, subsampled, tokenised texts of both conditions."""

from transformers import AutoTokenizer

from rsdyn.corpus import build_corpus, save_corpus
from rsdyn.jobs import setup_job

log = setup_job(snakemake.log[0])
tokenizer = AutoTokenizer.from_pretrained(snakemake.input.model)
corpus = build_corpus(snakemake.params.settings, tokenizer)
save_corpus(corpus, snakemake.output[0])
log.info("wrote %d sequences (max %d tokens) to %s", len(corpus.texts), corpus.lengths.max(), snakemake.output[0])
