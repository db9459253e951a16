# Units stage (rsdyn.units): per-unit dynamics (Fig. 1 C, D, G, H and the single-unit
# rotations of Fig. 2) in unit_stats.shards independent CPU jobs over contiguous unit
# ranges, gathered into one store; layer statistics (Fig. 1 B, E, F); Fig. 1. The shard
# count is static (expand over the config), no checkpoint.


rule unit_stats_shard:
    input:
        run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/unit_stats/shard_{{shard}}.zarr"),
    params:
        settings=setting("unit_stats"),
    threads: 1
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/{{run}}/logs/unit_stats_shard_{{shard}}.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/unit_stats_shard_{{shard}}.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/unit_stats_shard.py"


rule unit_stats_gather:
    input:
        lambda wildcards: expand(
            f"{RESULTS}/{wildcards.run}/unit_stats/shard_{{shard}}.zarr",
            shard=range(RUNS[wildcards.run]["unit_stats"]["shards"]),
        ),
    output:
        directory(f"{RESULTS}/{{run}}/unit_stats.zarr"),
    params:
        shards=setting("unit_stats", "shards"),
        lineage=lineage("unit_stats"),
    log:
        f"{RESULTS}/{{run}}/logs/unit_stats_gather.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/unit_stats_gather.py"


rule layer_stats:
    input:
        run_file("activations.zarr"),
    output:
        f"{RESULTS}/{{run}}/layer_stats.csv",
    params:
        settings=setting("layer_stats"),
    log:
        f"{RESULTS}/{{run}}/logs/layer_stats.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/layer_stats.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/layer_stats.py"


rule fig1:
    input:
        unit_stats=run_file("unit_stats.zarr"),
        layer_stats=run_file("layer_stats.csv"),
        summary=run_file("summary.json"),  # the judged claims, marked on the figure
    output:
        pdf=f"{RESULTS}/{{run}}/figures/fig1.pdf",
        png=report(
            f"{RESULTS}/{{run}}/figures/fig1.png",
            caption="../report/fig1.rst",
            category="Figures",
            labels={"run": "{run}", "figure": "Fig. 1"},
        ),
    params:
        settings=setting("figures"),
        lineage=lineage("unit_stats", "layer_stats"),
    log:
        f"{RESULTS}/{{run}}/logs/fig1.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig1.py"
