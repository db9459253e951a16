# Corpus: WikiText-2 raw (local file when present, else the hub), length filter, seeded
# subsample, BOS tokenisation and the shuffled condition, in one file per run.


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
