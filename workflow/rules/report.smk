# Report stage (rsdyn.report): the headline numbers beside the paper's (summary.json, and
# a table for the report), and the run's resolved configuration, shown in `snakemake
# --report`. The Fig. 1 rows, whose intervals resample the sequences of
# activations.zarr, have a rule of their own: a control run needs only them
# (config/controls.yaml). With several runs, their comparison (below).
from rsdyn.report.compare import COMPARE_DIR, CompareError, check_run_names


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
        layer_stats=run_file("layer_stats.csv"),
        claims=lambda wildcards: RUNS[wildcards.run]["summary"]["claims"],
    output:
        json=f"{RESULTS}/{{run}}/summary.json",
        table=report(
            f"{RESULTS}/{{run}}/summary.tsv",
            caption="../report/summary.rst",
            category="Summary",
            labels={"run": "{run}", "table": "paper vs ours"},
        ),
        claims=report(
            f"{RESULTS}/{{run}}/claims.tsv",
            caption="../report/claims.rst",
            category="Summary",
            labels={"run": "{run}", "table": "judged claims"},
        ),
        samples=f"{RESULTS}/{{run}}/claims.npz",
        config=report(
            f"{RESULTS}/{{run}}/run_config.yaml",
            caption="../report/config.rst",
            category="Configuration",
            labels={"run": "{run}", "file": "resolved config"},
        ),
    params:
        run=lambda wildcards: wildcards.run,
        settings=lambda wildcards: RUNS[wildcards.run],
    threads: 2  # the claims' bootstrap seeds and groups in parallel processes (same numbers on any count)
    log:
        f"{RESULTS}/{{run}}/logs/summary.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/summary.py"


# Cross-model comparison (when the config has more than one run): every summary row of
# every run side by side with its interval and verdict, the "Across models" table of the
# README, and the per-depth curves of Figs. 1, 4 and 5 on normalised depth.

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


#: runs that control another run (config ``control: {of, kind}``), and the runs they control
CONTROLS = {run: settings["control"] for run, settings in RUNS.items() if settings.get("control")}
CONTROL_RUNS = list(dict.fromkeys([*CONTROLS, *(control["of"] for control in CONTROLS.values())]))

if CONTROLS:

    rule controls:
        input:
            summary=expand(f"{RESULTS}/{{run}}/summary.json", run=CONTROL_RUNS),
            samples=expand(f"{RESULTS}/{{run}}/claims.npz", run=CONTROL_RUNS),
            claims=RUNS[CONTROL_RUNS[0]]["summary"]["claims"],
        output:
            markdown=f"{RESULTS}/{COMPARE_DIR}/controls.md",
            json=f"{RESULTS}/{COMPARE_DIR}/controls.json",
        params:
            runs=CONTROL_RUNS,
            controls=CONTROLS,
        log:
            f"{RESULTS}/{COMPARE_DIR}/logs/controls.log",
        conda:
            "../../envs/rsdyn.yaml"
        script:
            "../scripts/controls.py"
