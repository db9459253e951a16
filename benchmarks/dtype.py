"""bf16 or fp32 (issue 19.6): how far the default model's Fig. 1 claims move when the
capture runs in bfloat16 instead of float32, and when bf16 batches change composition.

Runs the default config's Fig. 1 part (corpus, capture, unit and layer statistics,
``summary_fig1.json``) for three runs of the default model that differ only in
``capture``: float32 (the CPU default), bfloat16 with length-bucketed batches (the GPU
default) and bfloat16 with batches in corpus order (other batch compositions, as on a
GPU with other batch limits), under ``--results`` (a results_dir of its own, by default
``results/dtype-benchmark``: results folders must lie outside the code's). Then compares
every Fig. 1 row and every judged Fig. 1 claim (the units stage's claims, judged on
each run's stores, Holm over these claims) of each bf16 run with float32: the value's
difference relative to the float32 interval's width, whether the verdict changed, and
the largest state difference between the captures. Writes benchmarks/results/dtype.json
and the claims as a markdown table.

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


def config(results: Path) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    model = base["runs"][0]["model"]
    base["results_dir"] = str(results)
    base["runs"] = [{"name": f"smollm2-135m-{name}", "model": {**model, "name": "smollm2-135m"},
                     "capture": {"device": "cpu", **capture}} for name, capture in RUNS.items()]
    return base


def rows(path: Path) -> dict[str, dict]:
    """The run's Fig. 1 rows (``summary_fig1.json``; descriptive, no verdicts)."""
    return {key: value for key, value in json.loads(path.read_text())["rows"].items() if isinstance(value, dict)}


def claims(run: Path, workers: int) -> dict[str, dict]:
    """The run's judged Fig. 1 claims (the units stage's providers; Holm over these claims
    only, one bootstrap seed), as ``{id: claim}``."""
    from rsdyn.report.claims import claims_table

    stores = {"activations": run / "activations.zarr", "unit_stats": run / "unit_stats.zarr", "layer_stats": run / "layer_stats.csv"}
    table = claims_table(stores, {"stability_seeds": 1}, workers=workers)
    return {claim["id"]: claim for claim in table if claim.get("verdict") is not None}


def compare(reference: dict[str, dict], other: dict[str, dict]) -> dict:
    """Per row or claim: the value's change and that change over the reference interval's
    width; the verdicts side by side (claims only)."""
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


def moved(compared: dict) -> dict:
    widths = [e["difference_over_interval_width"] for e in compared.values() if e.get("difference_over_interval_width") is not None]
    return {"n_with_interval": len(widths),
            "median_difference_over_interval_width": float(np.median(widths)) if widths else None,
            "max_difference_over_interval_width": float(np.max(widths)) if widths else None}


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
    runs = [results / f"smollm2-135m-{name}" for name in RUNS]
    reference = {"rows": rows(Path(targets[0])), "claims": claims(runs[0], args.cores)}
    report = {"runs": RUNS, "n_rows": len(reference["rows"]), "n_claims": len(reference["claims"])}
    for name, run, target in zip(list(RUNS)[1:], runs[1:], targets[1:]):
        other = {"rows": rows(Path(target)), "claims": claims(run, args.cores)}
        entry = {"states": state_difference(results, name)}
        for part in ("rows", "claims"):
            compared = compare(reference[part], other[part])
            entry[part] = {"compared": compared, **moved(compared)}
        entry["claims"]["verdicts_changed"] = sorted(key for key, e in entry["claims"]["compared"].items() if e["verdict_changed"])
        report[name] = entry

    def show(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| claim | fp32 | bf16 | bf16, corpus order | verdicts (fp32 / bf16 / corpus order) |", "|---|---|---|---|---|"]
    for key, claim in reference["claims"].items():
        a, b = report["bf16"]["claims"]["compared"][key], report["bf16-corpus-order"]["claims"]["compared"][key]
        lines.append(f"| `{key}` | {show(claim.get('value'))} | {show(a['bf16'])} | {show(b['bf16'])} | "
                     f"{claim.get('verdict')} / {a['verdict_bf16']} / {b['verdict_bf16']} |")
    report["table"] = "\n".join(lines)
    write_report(report, args.out)
    (Path(args.out).with_suffix(".md")).write_text(report["table"] + "\n")
    for name in list(RUNS)[1:]:
        entry = report[name]
        print(f"{name}: claim verdicts changed {entry['claims']['verdicts_changed']} of {report['n_claims']}; "
              f"claim values moved by a median {show(entry['claims']['median_difference_over_interval_width'])} and at most "
              f"{show(entry['claims']['max_difference_over_interval_width'])} interval widths, Fig. 1 rows by a median "
              f"{show(entry['rows']['median_difference_over_interval_width'])} and at most "
              f"{show(entry['rows']['max_difference_over_interval_width'])}; states {entry['states']}")


if __name__ == "__main__":
    main()
