# Cross-model comparison (when the config has more than one run): every summary row of
# every run side by side with its interval and verdict, the "Across models" table of the
# README, and the per-depth curves of Figs. 1, 4 and 5 on normalised depth.
from rsdyn.compare import COMPARE_DIR, CompareError, check_run_names

try:
    check_run_names(list(RUNS))
except CompareError as err:
    raise WorkflowError(str(err)) from None


if len(RUNS) > 1:

    rule compare:
        input:
            summary=expand(f"{RESULTS}/{{run}}/summary.json", run=list(RUNS)),
            layer_stats=expand(f"{RESULTS}/{{run}}/layer_stats.csv", run=list(RUNS)),
            unit_stats=expand(f"{RESULTS}/{{run}}/unit_stats.zarr", run=list(RUNS)),
            pca=expand(f"{RESULTS}/{{run}}/pca.zarr", run=list(RUNS)),
            teleport=expand(f"{RESULTS}/{{run}}/teleport.zarr", run=list(RUNS)),
            jacobian=expand(f"{RESULTS}/{{run}}/jacobian.zarr", run=list(RUNS)),
        output:
            table=report(
                f"{RESULTS}/{COMPARE_DIR}/summary.tsv",
                caption="../report/compare.rst",
                category="Across models",
                labels={"table": "summary rows x runs"},
            ),
            markdown=f"{RESULTS}/{COMPARE_DIR}/across_models.md",
            pdf=f"{RESULTS}/{COMPARE_DIR}/fig_compare.pdf",
            png=report(
                f"{RESULTS}/{COMPARE_DIR}/fig_compare.png",
                caption="../report/fig_compare.rst",
                category="Across models",
                labels={"figure": "per-depth curves"},
            ),
        params:
            runs=list(RUNS),
            dpi=RUNS[next(iter(RUNS))]["figures"]["dpi"],
            settings=RUNS,  # every run's settings: the inputs were computed from all of them
        log:
            f"{RESULTS}/{COMPARE_DIR}/logs/compare.log",
        conda:
            "../../envs/rsdyn.yaml"
        script:
            "../scripts/compare.py"
