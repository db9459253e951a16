"""bf16 or fp32 (issue 19.6): how far the default model's Fig. 1 claims move when the
capture runs in bfloat16 instead of float32, and when bf16 batches change composition.

Runs the default config's Fig. 1 part (corpus, capture, unit and layer statistics,
``summary_fig1.json``) for three runs of the default model that differ only in
``capture``: float32 (the CPU default), bfloat16 with length-bucketed batches (the GPU
default) and bfloat16 with batches in corpus order (other batch compositions, as on a
GPU with other batch limits), under ``--results`` (a results_dir of its own, by default
``results/dtype-benchmark``: results folders must lie outside the code's). Then compares
every row of each bf16 run with float32: the value's difference relative to
the row's 95 % interval width, whether the verdict changed, and the largest state
difference between the captures. Writes benchmarks/results/dtype.json and a markdown
table.

    python benchmarks/dtype.py [--cores 2] [--results results/dtype-benchmark] [--compare-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from common import REPO, write_report

RUNS = {
    "fp32": {"dtype": "float32", "bucket_by_length": True},
    "bf16": {"dtype": "bfloat16", "bucket_by_length": True},
    "bf16-corpus-order": {"dtype": "bfloat16", "bucket_by_length": False},
}
META = ("run", "model", "n_samples", "corpus", "paper", "bootstrap")


def config(results: Path) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    model = base["runs"][0]["model"]
    base["results_dir"] = str(results)
    base["runs"] = [{"name": f"smollm2-135m-{name}", "model": {**model, "name": "smollm2-135m"},
                     "capture": {"device": "cpu", **capture}} for name, capture in RUNS.items()]
    return base


def rows(path: Path) -> dict[str, dict]:
    summary = json.loads(path.read_text())
    return {key: value for key, value in summary.items() if key not in META and isinstance(value, dict)}


def compare(reference: dict[str, dict], other: dict[str, dict]) -> dict:
    """Per row: the value's change and that change over the reference interval's width;
    the verdicts side by side."""
    out = {}
    for key, row in reference.items():
        theirs = other.get(key, {})
        value, moved = row.get("value"), theirs.get("value")
        entry = {"fp32": value, "bf16": moved, "verdict_fp32": row.get("verdict"), "verdict_bf16": theirs.get("verdict")}
        if isinstance(value, (int, float)) and isinstance(moved, (int, float)):
            entry["difference"] = float(moved - value)
            if row.get("interval"):
                width = float(row["interval"][1] - row["interval"][0])
                entry["difference_over_interval_width"] = float(abs(moved - value) / width) if width > 0 else None
        entry["verdict_changed"] = entry["verdict_fp32"] != entry["verdict_bf16"]
        out[key] = entry
    return out


def state_difference(results: Path, name: str) -> dict:
    from rsdyn.core.store import open_group

    reference = open_group(results / "smollm2-135m-fp32" / "activations.zarr")["original"][...]
    other = open_group(results / f"smollm2-135m-{name}" / "activations.zarr")["original"][...]
    difference = np.abs(other - reference)
    return {"max_abs": float(difference.max()), "max_abs_state": float(np.abs(reference).max()),
            "median_relative_per_state": float(np.median(np.linalg.norm(other - reference, axis=2)
                                                         / np.linalg.norm(reference, axis=2)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--results", default=str(REPO / "results/dtype-benchmark"))
    parser.add_argument("--compare-only", action="store_true", help="only compare runs made before")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/dtype.json"))
    args = parser.parse_args()
    results = Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    config_file = results / "dtype.yaml"
    config_file.write_text(yaml.safe_dump(config(results)))
    targets = [str(results / f"smollm2-135m-{name}" / "summary_fig1.json") for name in RUNS]
    if not args.compare_only:
        # the targets before --resources, whose values (nargs "+") would swallow them
        subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", str(args.cores), "--configfile", str(config_file),
                        "--resources", "gpu=1"], cwd=REPO, check=True)
    reference = rows(Path(targets[0]))
    report = {"runs": RUNS, "n_rows": len(reference)}
    lines = ["| row | fp32 | bf16 | bf16, corpus order | verdicts (fp32 / bf16 / corpus order) |", "|---|---|---|---|---|"]
    compared = {}
    for name, target in zip(list(RUNS)[1:], targets[1:]):
        compared[name] = compare(reference, rows(Path(target)))
        moved = [e["difference_over_interval_width"] for e in compared[name].values() if e.get("difference_over_interval_width") is not None]
        report[name] = {
            "rows": compared[name],
            "verdicts_changed": sorted(key for key, e in compared[name].items() if e["verdict_changed"]),
            "median_difference_over_interval_width": float(np.median(moved)) if moved else None,
            "max_difference_over_interval_width": float(np.max(moved)) if moved else None,
            "states": state_difference(results, name),
        }
    for key, row in reference.items():
        a, b = compared["bf16"][key], compared["bf16-corpus-order"][key]

        def show(value):
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        lines.append(f"| `{key}` | {show(row.get('value'))} | {show(a['bf16'])} | {show(b['bf16'])} | "
                     f"{row.get('verdict', '')} / {a['verdict_bf16'] or ''} / {b['verdict_bf16'] or ''} |")
    report["table"] = "\n".join(lines)
    write_report(report, args.out)
    (Path(args.out).with_suffix(".md")).write_text(report["table"] + "\n")
    for name in list(RUNS)[1:]:
        print(f"{name}: verdicts changed {report[name]['verdicts_changed']}; value moved by a median "
              f"{report[name]['median_difference_over_interval_width']:.3g} and at most "
              f"{report[name]['max_difference_over_interval_width']:.3g} interval widths; states {report[name]['states']}")


if __name__ == "__main__":
    main()
