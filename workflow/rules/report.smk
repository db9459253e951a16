# Summary: the headline numbers beside the paper's (summary.json, and a table for the
# report), and the run's resolved configuration, shown in `snakemake --report`. The
# Fig. 1 rows, whose intervals resample the sequences of activations.zarr, have a rule of
# their own: a control run needs only them (config/controls.yaml).


rule fig1_summary:
    input:
        activations=run_file("activations.zarr"),
        unit_stats=run_file("unit_stats.zarr"),
        layer_stats=run_file("layer_stats.csv"),
    output:
        f"{RESULTS}/{{run}}/summary_fig1.json",
    params:
        run=lambda wildcards: wildcards.run,
        summary=setting("summary"),
        density_threshold=setting("layer_stats", "density_threshold"),
    log:
        f"{RESULTS}/{{run}}/logs/fig1_summary.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/fig1_summary.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig1_summary.py"


rule summary:
    input:
        activations=run_file("activations.zarr"),
        fig1=run_file("summary_fig1.json"),
        unit_stats=run_file("unit_stats.zarr"),
        pca=run_file("pca.zarr"),
        cae=run_file("cae"),
        teleport=run_file("teleport.zarr"),
        population=run_file("population.zarr"),
        jacobian=run_file("jacobian.zarr"),
    output:
        json=f"{RESULTS}/{{run}}/summary.json",
        table=report(
            f"{RESULTS}/{{run}}/summary.tsv",
            caption="../report/summary.rst",
            category="Summary",
            labels={"run": "{run}", "table": "paper vs ours"},
        ),
        config=report(
            f"{RESULTS}/{{run}}/run_config.yaml",
            caption="../report/config.rst",
            category="Configuration",
            labels={"run": "{run}", "file": "resolved config"},
        ),
    params:
        run=lambda wildcards: wildcards.run,
        settings=lambda wildcards: RUNS[wildcards.run],
    log:
        f"{RESULTS}/{{run}}/logs/summary.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/summary.py"
