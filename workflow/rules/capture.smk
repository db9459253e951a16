# Capture stage (rsdyn.capture): the corpus (WikiText-2 raw, local file when present, else
# the hub; length filter, seeded subsample, BOS tokenisation and the shuffled condition,
# one file per run), and the residual stream of the last real token at both hook sites of
# every layer, for the original and the shuffled condition. Each dataset (the run's corpus ->
# activations.zarr; the CAE's own corpus, when cae.corpus is set -> cae_activations.zarr,
# the CAE's condition only) is captured by K GPU-tagged shard jobs over contiguous runs
# of whole sample chunks, each streaming its blocks into its own store, then assembled
# by hard-linking their chunk files into one store (rsdyn.capture.run.assemble_store).
# K = capture.shards (for the CAE corpus cae.capture_shards, or capture.shards).
from rsdyn.capture.settings import DATASETS, dataset_conditions, dataset_corpus_settings, dataset_shards, recorded_settings, shard_job_settings


rule corpus:
    input:
        unpack(corpus_inputs),
    output:
        f"{RESULTS}/{{run}}/corpus.npz",
    params:
        settings=setting("corpus"),
    log:
        f"{RESULTS}/{{run}}/logs/corpus.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/corpus.py"


rule capture_shard:
    input:
        model=model_dir,
        corpus=lambda wildcards: f"{RESULTS}/{wildcards.run}/{DATASETS[wildcards.dataset]}",
    output:
        directory(f"{RESULTS}/{{run}}/capture/{{dataset}}_shard_{{shard}}.zarr"),
    wildcard_constraints:
        dataset="|".join(DATASETS),
    params:
        settings=lambda wildcards: shard_job_settings(RUNS[wildcards.run], wildcards.dataset),
        model=lambda wildcards: RUNS[wildcards.run]["model"],
        shard=lambda wildcards: int(wildcards.shard),
        conditions=lambda wildcards: dataset_conditions(RUNS[wildcards.run], wildcards.dataset),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{run}}/logs/capture_{{dataset}}_shard_{{shard}}.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/capture_{{dataset}}_shard_{{shard}}.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/capture_shard.py"


rule capture:
    input:
        shards=lambda wildcards: expand(
            f"{RESULTS}/{wildcards.run}/capture/{wildcards.dataset}_shard_{{shard}}.zarr",
            shard=range(dataset_shards(RUNS[wildcards.run], wildcards.dataset)),
        ),
        corpus=lambda wildcards: f"{RESULTS}/{wildcards.run}/{DATASETS[wildcards.dataset]}",
    output:
        directory(f"{RESULTS}/{{run}}/{{dataset}}.zarr"),
    wildcard_constraints:
        dataset="|".join(DATASETS),
    params:
        settings=lambda wildcards: recorded_settings(RUNS[wildcards.run]["capture"]),
        model=lambda wildcards: RUNS[wildcards.run]["model"],
        corpus=lambda wildcards: dataset_corpus_settings(RUNS[wildcards.run], wildcards.dataset),
    log:
        f"{RESULTS}/{{run}}/logs/{{dataset}}.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/capture.py"
