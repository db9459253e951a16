# Summary: the headline numbers beside the paper's (summary.json, and a table for the
# report), and the run's resolved configuration, shown in `snakemake --report`.


rule summary:
    input:
        activations=run_file("activations.zarr"),
        unit_stats=run_file("unit_stats.zarr"),
        layer_stats=run_file("layer_stats.csv"),
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
