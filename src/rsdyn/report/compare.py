"""Cross-model comparison: every summary row of every run side by side (``summary.tsv``),
the README's "Across models" table (judged claim -> verdict per model) and the per-depth curves of
Figs. 1, 4 and 5 on normalised depth (``fig_compare``, drawn by :mod:`rsdyn.report.compare_figure`).

Normalised depth: a sublayer state s of a model with L layers sits at s / 2L, a transition
s -> s + 1 at its midpoint (s + 1/2) / 2L, a teleport layer l at its input 2l / 2L.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.report.summary import format_value

COMPARE_DIR = "compare"


class CompareError(ValueError):
    """The runs cannot be compared; the message says why."""


def check_run_names(runs: Sequence[str]) -> None:
    """A run named like the comparison folder would share its results folder."""
    if COMPARE_DIR in runs:
        raise CompareError(
            f"Invalid config: a run is named {COMPARE_DIR!r}, the folder of the cross-run comparison; rename the run."
        )


# --------------------------------------------------------------------------- table


def row_names(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every row name of every summary, in first-seen order (runs in the given order)."""
    names: dict[str, None] = {}
    for summary in summaries.values():
        names.update(dict.fromkeys(summary["rows"]))
    return list(names)


def format_cell(row: Mapping[str, Any] | None) -> str:
    """``value [low, high]`` of a row (only the parts it has); empty when absent."""
    if row is None:
        return ""
    text = format_value(row.get("value"))
    interval = row.get("interval")
    if interval is not None:
        text += f" [{format_value(interval[0])}, {format_value(interval[1])}]"
    return text


def compare_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per summary row: ``quantity``, ``paper``, ``expected``, ``definition``
    (from the first run that has the row) and ``runs`` = {run: the row or None}."""
    records = []
    for name in row_names(summaries):
        present = [summary["rows"][name] for summary in summaries.values() if name in summary["rows"]]
        first = present[0]
        records.append({
            "quantity": name,
            "paper": first.get("paper"),
            "expected": first.get("expected"),
            "definition": first.get("definition", ""),
            "runs": {run: summary["rows"].get(name) for run, summary in summaries.items()},
        })
    return records


def write_compare_table(summaries: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """``summary.tsv`` of the comparison, atomically: quantity, paper, expected, one column
    per run (``value [interval] verdict``), definition."""
    from rsdyn.core.store import atomic_file

    runs = list(summaries)
    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["quantity", "paper", "expected", *runs, "definition"])
        for record in compare_rows(summaries):
            writer.writerow([
                record["quantity"], format_value(record["paper"]), record["expected"] or "",
                *(format_cell(record["runs"][run]) for run in runs), record["definition"],
            ])


def read_compare_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """``(run names, rows as dicts)`` of a comparison ``summary.tsv``."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        rows = list(reader)
        fields = reader.fieldnames or []
    return [field for field in fields if field not in ("quantity", "paper", "expected", "definition")], rows


def claim_ids(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every claim id of every summary, in first-seen order."""
    ids: dict[str, None] = {}
    for summary in summaries.values():
        ids.update(dict.fromkeys(claim["id"] for claim in summary.get("claims", [])))
    return list(ids)


def across_models_markdown(summaries: Mapping[str, Mapping[str, Any]], models: Mapping[str, str] | None = None) -> str:
    """The README's "Across models" table: every judged claim of the registry, the paper's
    words, and per run its verdict with the value and interval. ``models``: column titles
    per run (default: the summary's model name)."""
    runs = list(summaries)
    titles = [
        (models or {}).get(run) or (summaries[run].get("model") or {}).get("model_name") or run for run in runs
    ]
    claims = {run: {claim["id"]: claim for claim in summary.get("claims", [])} for run, summary in summaries.items()}
    lines = ["| claim | the paper's words | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(runs)]
    for claim_id in claim_ids(summaries):
        entries = [claims[run].get(claim_id) for run in runs]
        if not any(entry and entry.get("verdict") for entry in entries):
            continue
        first = next(entry for entry in entries if entry)
        cells = []
        for entry in entries:
            if not entry or not entry.get("verdict"):
                cells.append("—")
                continue
            cells.append(f"**{entry['verdict']}** ({format_cell({'value': entry.get('value'), 'interval': entry.get('interval')})})")
        quote = str(first.get("quote", "")).replace("|", "/")
        lines.append(f"| `{claim_id}` | \"{quote}\" | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_counts(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per run, how many judged claims have each verdict."""
    counts = {}
    for run, summary in summaries.items():
        verdicts = [claim.get("verdict") for claim in summary.get("claims", []) if claim.get("verdict")]
        counts[run] = {word: verdicts.count(word) for word in sorted(set(verdicts))}
    return counts


# --------------------------------------------------------------------------- curves


def sublayer_depth(n_sublayers: int) -> np.ndarray:
    """Normalised depth s / 2L of the 2L sublayer states."""
    return np.arange(n_sublayers) / n_sublayers


def transition_depth(n_transitions: int, n_sublayers: int) -> np.ndarray:
    """Normalised depth (s + 1/2) / 2L of the transitions s -> s + 1."""
    return (np.arange(n_transitions) + 0.5) / n_sublayers


def _layer_curves(layer_stats_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import pandas as pd

    table = pd.read_csv(layer_stats_path)
    table = table[table["condition"] == "original"]
    sublayers = table[table["kind"] == "sublayer"].sort_values("index")
    transitions = table[table["kind"] == "transition"].sort_values("index")
    n = len(sublayers)
    x_state, x_step = sublayer_depth(n), transition_depth(len(transitions), n)
    return {
        "cosine": (x_step, transitions["cosine_mean"].to_numpy(float)),
        "velocity": (x_step, transitions["velocity_mean"].to_numpy(float)),
        "norm": (x_state, sublayers["norm_mean"].to_numpy(float)),
        "density": (x_state, sublayers["density"].to_numpy(float)),
    }


def _unit_curves(unit_stats_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from rsdyn.core.store import open_group

    group = open_group(unit_stats_path)["original"]
    out = {}
    for key, name in (("corr_consecutive", "correlation"), ("mi_kde", "mi_kde")):
        values = np.asarray(group[key][...], dtype=np.float64)  # (2L - 1, D)
        out[name] = (transition_depth(values.shape[0], values.shape[0] + 1), np.nanmedian(values, axis=1))
    return out


def _pca_curves(pca_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from rsdyn.core.store import open_group

    values = np.asarray(open_group(pca_path)["ev_per_sublayer"][...], dtype=np.float64)
    return {"pca_ev": (sublayer_depth(len(values)), values)}


def _teleport_curves(teleport_path: str | Path, n_sublayers: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from rsdyn.geometry.run import read_teleport

    groups = read_teleport(teleport_path)
    layers = sorted(groups)
    mse = np.array([float(np.mean(groups[layer]["mse_to_control"])) for layer in layers])
    return {"teleport_mse": (2 * np.asarray(layers) / n_sublayers, mse)}


def _jacobian_curves(jacobian_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from rsdyn.jacobian.run import read_jacobian

    arrays, attrs = read_jacobian(jacobian_path)
    out = {}
    for weights in ("trained", "initial"):
        group = arrays.get(weights)
        if group is None:
            continue
        n = np.asarray(group["rotation_index_mean"]).shape[0]
        x = transition_depth(n, n)
        d_model = float(attrs["d_model"]) if "d_model" in attrs else float(np.asarray(group["eigenvalues"]).shape[-1])
        if weights == "trained":  # within- and cross-layer transitions alternate: one curve each
            for key in ("rotation_index", "update_rotation_index", "update_henrici", "update_antisymmetric_share", "henrici"):
                values = np.asarray(group[f"{key}_mean"], dtype=np.float64)
                for parity, kind in enumerate(("within", "cross")):
                    out[f"{key}:{weights}, {kind}"] = (x[parity::2], values[parity::2])
        cumulative = np.asarray(group["cumulative_effective_rank_entropy_mean"], dtype=np.float64)
        depth = (np.arange(len(cumulative)) + 1) / len(cumulative)  # one point per transition, or per layer
        out[f"cumulative_rank_fraction:{weights}"] = (depth, cumulative / d_model)
        out[f"top_lyapunov:{weights}"] = (depth, np.asarray(group["lyapunov"], np.float64)[:, :, 0].mean(axis=0))
    return out


def run_curves(paths: Mapping[str, str | Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-depth curves of one run on normalised depth, ``{name: (x, y)}``, from the stores
    named in ``paths`` (keys ``layer_stats``, ``unit_stats``, ``pca``, ``teleport``,
    ``jacobian``; any may be missing). A store whose layout lacks a curve's array is
    skipped for that curve."""
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    readers = {"layer_stats": _layer_curves, "unit_stats": _unit_curves, "pca": _pca_curves, "jacobian": _jacobian_curves}
    for key, reader in readers.items():
        if paths.get(key):
            try:
                curves.update(reader(paths[key]))
            except KeyError:
                continue
    if paths.get("teleport"):
        n_sublayers = len(curves["norm"][0]) if "norm" in curves else None
        if n_sublayers is None and "pca_ev" in curves:
            n_sublayers = len(curves["pca_ev"][0])
        if n_sublayers:
            curves.update(_teleport_curves(paths["teleport"], n_sublayers))
    return curves


def run_compare(
    runs: Sequence[str], inputs: Mapping[str, Sequence[str]], table_path, pdf_path, png_path, markdown_path=None, dpi: int = 150
) -> dict[str, dict[str, Any]]:
    """The ``compare`` rule: read each run's ``summary.json`` and stores (``inputs``: one
    list per kind, in the order of ``runs``), write the table, the figure and (optionally)
    the "Across models" Markdown table. Returns the summaries."""
    from rsdyn.core.store import atomic_file
    from rsdyn.report.compare_figure import save_fig_compare

    if len(runs) < 2:
        raise CompareError(f"The comparison needs at least two runs; the config has {len(runs)}.")
    summaries = {run: json.loads(Path(path).read_text()) for run, path in zip(runs, inputs["summary"])}
    write_compare_table(summaries, table_path)
    curves = {
        run: run_curves({kind: paths[index] for kind, paths in inputs.items() if kind != "summary"})
        for index, run in enumerate(runs)
    }
    titles = {run: (summaries[run].get("model") or {}).get("model_name") or run for run in runs}
    save_fig_compare(curves, pdf_path, png_path, titles, dpi=dpi)
    if markdown_path is not None:
        with atomic_file(markdown_path) as temp:
            Path(temp).write_text(across_models_markdown(summaries))
    logging.getLogger(__name__).info("verdicts per run: %s", verdict_counts(summaries))
    return summaries


def main(argv: list[str] | None = None) -> None:
    """``python -m rsdyn.report.compare results/a/summary.json results/b/summary.json``: the
    "Across models" Markdown table."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("summaries", nargs="+", help="summary.json files written by the summary rule")
    args = parser.parse_args(argv)
    summaries = {Path(path).parent.name: json.loads(Path(path).read_text()) for path in args.summaries}
    print(across_models_markdown(summaries), end="")


if __name__ == "__main__":
    main()
