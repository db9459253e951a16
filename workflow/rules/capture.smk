# Capture: the residual stream of the last real token at both hook sites of every layer,
# for the original and the shuffled condition, into one zarr store chunked along units.


rule capture:
    input:
        model=model_dir,
        corpus=run_file("corpus.npz"),
    output:
        directory(f"{RESULTS}/{{run}}/activations.zarr"),
    params:
        settings=setting("capture"),
        model=lambda wildcards: RUNS[wildcards.run]["model"],
        corpus=setting("corpus"),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{run}}/logs/capture.log",
    benchmark:
        f"{RESULTS}/{{run}}/benchmarks/capture.tsv"
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/capture.py"
