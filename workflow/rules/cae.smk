# CAE stage (rsdyn.cae): the compressing autoencoder of the pooled sublayer states
# (Fig. 3), trained on the run's activations.zarr or, when cae.corpus is set, on the
# capture of its own corpus (cae_corpus.npz -> cae_activations.zarr, see capture.smk).
from rsdyn.cae.settings import cae_job_settings, cae_store_name, local_corpus_candidate


rule cae_corpus:
    input:
        unpack(
            lambda wildcards: {
                "model": model_dir(wildcards),
                **({"text": text} if (text := local_corpus_candidate(RUNS[wildcards.run]["cae"]["corpus"])) else {}),
            }
        ),
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
        lambda wildcards: f"{RESULTS}/{wildcards.run}/{cae_store_name(RUNS[wildcards.run])}",
    output:
        directory(f"{RESULTS}/{{run}}/cae"),
    params:
        settings=lambda wildcards: cae_job_settings(RUNS[wildcards.run]),
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
        cae=run_file("cae"),
        summary=run_file("summary.json"),  # the judged claims, marked on the figure
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
