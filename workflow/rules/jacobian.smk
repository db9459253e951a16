# Jacobians of the sublayer updates (the authors' follow-up): for jacobian.n_samples
# sequences, the exact Jacobian of every sublayer transition of the last token, its
# spectra and the cumulative product, for the trained weights; on jacobian.baseline_samples
# of them, for freshly initialised weights (one model per jacobian.init_seeds) and for
# surrogates of the trained updates (svd_matched, norm_matched); one sequence after
# another (torch.func is not thread-safe). Fig. 5.


rule jacobian:
    input:
        model=model_dir,
        activations=run_file("activations.zarr"),
    output:
        directory(f"{RESULTS}/{{run}}/jacobian.zarr"),
    params:
        settings=setting("jacobian"),
        family=lambda wildcards: RUNS[wildcards.run]["model"]["family"],
        lineage=lineage("capture"),
    threads: 2
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{run}}/logs/jacobian.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/jacobian.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/jacobian.py"


rule fig5:
    input:
        jacobian=run_file("jacobian.zarr"),
        summary=run_file("summary.json"),  # the judged claims, marked on the figure
    output:
        pdf=f"{RESULTS}/{{run}}/figures/fig5.pdf",
        png=report(
            f"{RESULTS}/{{run}}/figures/fig5.png",
            caption="../report/fig5.rst",
            category="Figures",
            labels={"run": "{run}", "figure": "Fig. 5"},
        ),
    params:
        dpi=setting("figures", "dpi"),
        lineage=lineage("jacobian"),
    log:
        f"{RESULTS}/{{run}}/logs/fig5.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/fig5.py"
