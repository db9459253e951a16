# Dimensionality reduction of the pooled sublayer states: PCA (Fig. 4 A-C, and the basis
# of the teleport grid) and the compressing autoencoder (Fig. 3).


rule pca:
    input:
        run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/pca.zarr"),
    params:
        settings=setting("pca"),
    threads: 2
    log:
        f"{RESULTS}/{{run}}/logs/pca.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/pca.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/pca.py"


def cae_corpus_inputs(wildcards):
    """The model (for its tokenizer) and the first existing local file of the CAE corpus's
    split, if any (none: the corpus script loads it from the hub)."""
    corpus = RUNS[wildcards.run]["cae"]["corpus"]
    candidates = corpus["local_candidates"]
    if isinstance(candidates, dict):
        candidates = candidates.get(corpus["split"], [])
    inputs = {"model": model_dir(wildcards)}
    for candidate in candidates:
        if Path(candidate).is_file():
            inputs["text"] = candidate
            break
    return inputs


def cae_store(wildcards):
    """The store the CAE trains on: its own corpus's capture when cae.corpus is set."""
    own = RUNS[wildcards.run]["cae"]["corpus"] is not None
    return f"{RESULTS}/{wildcards.run}/{'cae_activations' if own else 'activations'}.zarr"


def cae_job_settings(wildcards):
    """The cae settings the training uses (its corpus reaches it through the store)."""
    return {key: value for key, value in RUNS[wildcards.run]["cae"].items() if key not in ("corpus", "capture_shards")}


rule cae_corpus:
    input:
        unpack(cae_corpus_inputs),
    output:
        f"{RESULTS}/{{run}}/cae_corpus.npz",
    params:
        settings=lambda wildcards: RUNS[wildcards.run]["cae"]["corpus"],
    log:
        f"{RESULTS}/{{run}}/logs/cae_corpus.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/corpus.py"


rule cae:
    input:
        cae_store,
    output:
        directory(f"{RESULTS}/{{run}}/cae"),
    params:
        settings=cae_job_settings,
    threads: 4
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{run}}/logs/cae.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/cae.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/cae.py"


rule fig3:
    input:
        run_file("cae"),
    output:
        pdf=f"{RESULTS}/{{run}}/figures/fig3.pdf",
        png=report(
            f"{RESULTS}/{{run}}/figures/fig3.png",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"run": "{run}", "figure": "Fig. 3"},
        ),
    params:
        settings=setting("figures"),
    log:
        f"{RESULTS}/{{run}}/logs/fig3.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig3.py"
