# Capture: the residual stream of the last real token at both hook sites of every layer,
# for the original and the shuffled condition. Each dataset (the run's corpus ->
# activations.zarr; the CAE's own corpus, when cae.corpus is set -> cae_activations.zarr)
# is captured by K GPU-tagged shard jobs over contiguous runs of whole sample chunks,
# each streaming its blocks into its own store, then assembled by hard-linking their
# chunk files into one store (rsdyn.capture.assemble_store). K = capture.shards (for the
# CAE corpus cae.capture_shards, or capture.shards).
from rsdyn.capture import recorded_settings

CAPTURE_CORPUS = {"activations": "corpus.npz", "cae_activations": "cae_corpus.npz"}


def capture_corpus_settings(wildcards):
    """The corpus settings of a dataset's sequences."""
    run = RUNS[wildcards.run]
    return run["corpus"] if wildcards.dataset == "activations" else run["cae"]["corpus"]


def capture_shards(run, dataset):
    """Number of capture shard jobs of a run's dataset."""
    settings = RUNS[run]
    if dataset == "cae_activations":
        return settings["cae"]["capture_shards"] or settings["capture"]["shards"]
    return settings["capture"]["shards"]


def capture_conditions(run, dataset):
    """Conditions a dataset's capture records: both for activations.zarr (the data
    contract), only the CAE's for the CAE's own corpus."""
    if dataset == "cae_activations":
        return [RUNS[run]["cae"]["condition"]]
    return ["original", "shuffled"]


rule capture_shard:
    input:
        model=model_dir,
        corpus=lambda wildcards: f"{RESULTS}/{wildcards.run}/{CAPTURE_CORPUS[wildcards.dataset]}",
    output:
        directory(f"{RESULTS}/{{run}}/capture/{{dataset}}_shard_{{shard}}.zarr"),
    wildcard_constraints:
        dataset="activations|cae_activations",
    params:
        settings=lambda wildcards: {**RUNS[wildcards.run]["capture"], "shards": capture_shards(wildcards.run, wildcards.dataset)},
        model=lambda wildcards: RUNS[wildcards.run]["model"],
        shard=lambda wildcards: int(wildcards.shard),
        conditions=lambda wildcards: capture_conditions(wildcards.run, wildcards.dataset),
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
            shard=range(capture_shards(wildcards.run, wildcards.dataset)),
        ),
        corpus=lambda wildcards: f"{RESULTS}/{wildcards.run}/{CAPTURE_CORPUS[wildcards.dataset]}",
    output:
        directory(f"{RESULTS}/{{run}}/{{dataset}}.zarr"),
    wildcard_constraints:
        dataset="activations|cae_activations",
    params:
        settings=lambda wildcards: recorded_settings(RUNS[wildcards.run]["capture"]),
        model=lambda wildcards: RUNS[wildcards.run]["model"],
        corpus=capture_corpus_settings,
    log:
        f"{RESULTS}/{{run}}/logs/{{dataset}}.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/capture.py"
