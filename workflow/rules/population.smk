# Population stage (rsdyn.population): rotations over depth (Fig. 2D), jPCA of the
# states of every sequence and sublayer, per depth window, against tensor-maximum-entropy
# surrogates; the R of every unit against TME surrogates of the whole capture; Fig. 2
# (single units against their nulls, and jPCA). One job per run, after capture.


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


rule fig2:
    input:
        unit_stats=run_file("unit_stats.zarr"),
        population=run_file("population.zarr"),
        summary=run_file("summary.json"),  # the judged claims, marked on the figure
    output:
        pdf=f"{RESULTS}/{{run}}/figures/fig2.pdf",
        png=report(
            f"{RESULTS}/{{run}}/figures/fig2.png",
            caption="../report/fig2.rst",
            category="Figures",
            labels={"run": "{run}", "figure": "Fig. 2"},
        ),
    params:
        settings=setting("figures"),
        surrogate=setting("unit_stats", "surrogate"),
        lineage=lineage("unit_stats", "population"),
    log:
        f"{RESULTS}/{{run}}/logs/fig2.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig2.py"
