# Population rotations over depth (Fig. 2D): jPCA of the states of every sequence and
# sublayer, per depth window, against tensor-maximum-entropy surrogates; and the R of
# every unit against TME surrogates of the whole capture. One job per run, after capture.


rule population:
    input:
        run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/population.zarr"),
    params:
        jpca=setting("jpca"),
        tme=setting("tme"),
        fdr_q=setting("unit_stats", "fdr_q"),
        lineage=lineage("population"),
    threads: 2
    resources:
        mem_mb=4000,
    log:
        f"{RESULTS}/{{run}}/logs/population.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/population.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/population.py"
