# Geometry stage (rsdyn.geometry): PCA of the pooled sublayer states (Fig. 4 A-C, and the
# basis of the teleport grid); teleportation (Fig. 4D): PC1-PC2 grid points (and, as a
# control, other corpus samples' states) written into the residual stream of one layer
# at a time (one GPU job per layer), gathered into teleport.zarr with the recovery
# metrics over the horizon arrow_sublayers (so a new horizon reruns no forward); Fig. 4.
# Teleport layers are checked against the model's layer count with the config
# (rsdyn.geometry.settings, collected by rsdyn.config), before any job.
from rsdyn.geometry.settings import job_settings


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



rule teleport_layer:
    input:
        model=model_dir,
        pca=run_file("pca.zarr"),
        activations=run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/teleport/layer_{{layer}}.zarr"),
    params:
        settings=lambda wildcards: job_settings(RUNS[wildcards.run]["teleport"]),
        layer=lambda wildcards: int(wildcards.layer),
        family=lambda wildcards: RUNS[wildcards.run]["model"]["family"],
        lineage=lineage("pca"),
    threads: 2
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{run}}/logs/teleport_layer.{{layer}}.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/teleport_layer.{{layer}}.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/teleport_layer.py"


rule teleport_gather:
    input:
        lambda wildcards: expand(
            f"{RESULTS}/{wildcards.run}/teleport/layer_{{layer}}.zarr",
            layer=RUNS[wildcards.run]["teleport"]["layers"],
        ),
    output:
        directory(f"{RESULTS}/{{run}}/teleport.zarr"),
    params:
        layers=setting("teleport", "layers"),
        arrow_sublayers=setting("teleport", "arrow_sublayers"),
        lineage=lineage("teleport"),
    log:
        f"{RESULTS}/{{run}}/logs/teleport_gather.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/teleport_gather.py"


rule fig4:
    input:
        pca=run_file("pca.zarr"),
        teleport=run_file("teleport.zarr"),
        summary=run_file("summary.json"),  # the judged claims, marked on the figure
    output:
        pdf=f"{RESULTS}/{{run}}/figures/fig4.pdf",
        png=report(
            f"{RESULTS}/{{run}}/figures/fig4.png",
            caption="../report/fig4.rst",
            category="Figures",
            labels={"run": "{run}", "figure": "Fig. 4"},
        ),
    params:
        arrow_sublayers=setting("teleport", "arrow_sublayers"),
        dpi=setting("figures", "dpi"),
        lineage=lineage("teleport"),
    log:
        f"{RESULTS}/{{run}}/logs/fig4.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig4.py"
