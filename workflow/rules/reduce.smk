# Dimensionality reduction of the pooled sublayer states: PCA (Fig. 4 A-C, and the basis
# of the teleport grid) and the compressing autoencoder (Fig. 3).


rule pca:
    input:
        run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/pca.zarr"),
    params:
        settings=setting("pca"),
        # bootstrap over sequences for the Fig. 4C rows (summary.bootstrap, summary.seed)
        bootstrap=lambda wildcards: RUNS[wildcards.run].get("summary", {}).get("bootstrap", 200),
        seed=lambda wildcards: RUNS[wildcards.run].get("summary", {}).get("seed", 0),
    # One BLAS thread: the stage is dominated by ~6,000 eigendecompositions of a few hundred
    # rows (the bootstrap), which gain nothing from a second thread and lose much when the
    # cores are shared (default run on a busy 2-core machine: 157 s with 1 thread, > 18 min with 2).
    threads: 1
    log:
        f"{RESULTS}/{{run}}/logs/pca.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/pca.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/pca.py"


rule cae:
    input:
        run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/cae"),
    params:
        settings=setting("cae"),
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
        lineage=lineage("cae"),
    log:
        f"{RESULTS}/{{run}}/logs/fig3.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig3.py"
