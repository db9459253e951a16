# Corpus: WikiText-2 raw (local file when present, else the hub), length filter, seeded
# subsample, BOS tokenisation and the shuffled condition, in one file per run.


def corpus_inputs(wildcards):
    """The model (for its tokenizer) and the first local corpus file that exists."""
    inputs = {"model": model_dir(wildcards)}
    for candidate in RUNS[wildcards.run]["corpus"]["local_candidates"]:
        if Path(candidate).is_file():
            inputs["text"] = candidate
            break
    return inputs


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
