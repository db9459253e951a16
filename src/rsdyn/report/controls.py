"""Learned or architectural? Each judged claim of a run read against its control runs.

A control run names the run it controls and what it changes (``control: {of: run, kind:
...}`` in the config):

- ``initial``: the same architecture and tokenizer with freshly initialised weights
  (``model.weights: random``, one run per ``model.init_seed``);
- ``quantisation``: the same weights with one more dose of their quantisation noise;
- ``last_word``: the capture's last token that is not punctuation instead of the last;
- ``keep_last``: the token-shuffled control with the last token kept.

Runs of the same corpus draw the same resamples for the same bootstrap seed and design
(:mod:`rsdyn.core.resampling`), so two runs' stored resamples (``claims.npz``) are paired,
and their difference is resampled by subtracting them. Per claim, against the
initialisation runs:

- ``learned``: the trained value differs from EVERY initialisation beyond the claim's
  margin (each difference's 95 % interval lies outside +- margin);
- ``architectural``: it is the same as every initialisation within the margin (each
  interval inside +- margin; needs a margin > 0);
- ``inconclusive`` otherwise, or when a run lacks the claim.

Against the quantisation run a claim is ``robust`` when its verdict is the same, and the
other controls' verdicts are shown beside the claim's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ("initial", "quantisation", "last_word", "keep_last")
LEVEL = 0.95


def difference_interval(reference: np.ndarray, other: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the paired resamples' difference ``reference - other``."""
    difference = np.asarray(reference, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    difference = difference[np.isfinite(difference)]
    if not len(difference):
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(difference, [tail, 100.0 - tail])
    return float(low), float(high)


def initial_reading(claim: Mapping[str, Any], reference: Mapping[str, Any], initials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``learned`` / ``architectural`` / ``inconclusive`` for one claim (module docstring);
    ``reference`` and each of ``initials`` are ``claims.npz`` contents of a run."""
    claim_id, margin = claim["id"], float(claim.get("margin", 0.0))
    present = [run for run in initials if claim_id in run]
    if claim_id not in reference or not present or len(present) < len(initials):
        return {"reading": "inconclusive", "why": "a run lacks the claim", "differences": []}
    differences = []
    for run in present:
        low, high = difference_interval(reference[claim_id], run[claim_id])
        value = float(reference[f"{claim_id}:value"]) - float(run[f"{claim_id}:value"])
        differences.append({"value": value, "interval": [low, high]})
    finite = all(np.isfinite(d["interval"]).all() for d in differences)
    beyond = finite and all(d["interval"][0] > margin or d["interval"][1] < -margin for d in differences)
    within = finite and margin > 0 and all(-margin < d["interval"][0] and d["interval"][1] < margin for d in differences)
    reading = "learned" if beyond else "architectural" if within else "inconclusive"
    return {"reading": reading, "differences": differences, "margin": margin}


def controls_table(
    registry_claims: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Any],
    reference_samples: Mapping[str, Any],
    controls: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One entry per judged claim of the reference run: its verdict, the reading against
    the initialisation runs and each other control's verdict.

    ``reference``: the run's summary.json; ``reference_samples``: its claims.npz;
    ``controls``: ``{run: {"kind": ..., "summary": summary.json, "samples": claims.npz}}``."""
    verdicts = {claim["id"]: claim.get("verdict") for claim in reference.get("claims", [])}
    initials = [entry["samples"] for entry in controls.values() if entry["kind"] == "initial"]
    by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for run, entry in controls.items():
        by_kind.setdefault(entry["kind"], []).append((run, {c["id"]: c for c in entry["summary"].get("claims", [])}))
    out = []
    for claim in registry_claims:
        if not claim.get("statistic") or claim["id"] not in verdicts:
            continue
        row: dict[str, Any] = {"id": claim["id"], "verdict": verdicts[claim["id"]]}
        if initials:
            row["initial"] = initial_reading(claim, reference_samples, initials)
            row["initial"]["runs"] = len(initials)
        for kind in ("quantisation", "last_word", "keep_last"):
            for run, run_claims in by_kind.get(kind, []):
                theirs = run_claims.get(claim["id"], {})
                other = theirs.get("verdict")
                entry = {"run": run, "verdict": other}
                if theirs.get("baseline_beaten") is False:
                    entry["baseline_beaten"] = False
                if kind == "quantisation":
                    # None: not judged in the control (its stage or inputs missing there)
                    entry["robust"] = None if other is None else other == verdicts[claim["id"]]
                row.setdefault(kind, []).append(entry)
        out.append(row)
    return out


def controls_counts(table: Sequence[Mapping[str, Any]]) -> str:
    """One sentence of counts over the table: the readings at initialisation, and how many
    verdicts each other control leaves unchanged."""
    parts = []
    readings = [row["initial"]["reading"] for row in table if row.get("initial")]
    if readings:
        parts.append(f"at initialisation {readings.count('learned')} learned, {readings.count('architectural')} architectural, "
                     f"{readings.count('inconclusive')} inconclusive")
    words = {"quantisation": "robust to one more dose of quantisation", "last_word": "unchanged at the last word",
             "keep_last": "unchanged with the last token kept"}
    for kind, words_of_kind in words.items():
        pairs = [(row["verdict"], entry["verdict"]) for row in table for entry in row.get(kind) or []]
        judged = [(mine, theirs) for mine, theirs in pairs if theirs is not None]
        if pairs:
            unjudged = f" ({len(pairs) - len(judged)} not judged in the control)" if len(judged) < len(pairs) else ""
            parts.append(f"{sum(1 for mine, theirs in judged if mine == theirs)} of {len(judged)} verdicts {words_of_kind}{unjudged}")
    return f"{len(table)} judged claims: " + "; ".join(parts) + "." if parts else f"{len(table)} judged claims, no controls."


def _control_cell(entry: Mapping[str, Any], kind: str) -> str:
    """A control's verdict of a claim: ``not judged`` where the control lacks the claim's
    stage or inputs, whether it is robust (quantisation), and a note where the control did
    not beat the claim's baseline (which caps its verdict at inconclusive)."""
    if entry.get("verdict") is None:
        return "not judged"
    text = str(entry["verdict"])
    notes = []
    if kind == "quantisation":
        notes.append("robust" if entry.get("robust") else "changes")
    if entry.get("baseline_beaten") is False:
        notes.append("its baseline not beaten or not run there")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def controls_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The README's table: claim | verdict | at initialisation | quantisation | last word | keep last."""
    lines = ["| claim | verdict (trained) | at initialisation | one more dose of quantisation | last word | keep last |",
             "|---|---|---|---|---|---|"]
    for row in table:
        cells = [f"`{row['id']}`", str(row.get("verdict") or "—")]
        initial = row.get("initial")
        if initial:
            diffs = "; ".join(
                f"{d['value']:.3g} [{d['interval'][0]:.3g}, {d['interval'][1]:.3g}]" for d in initial.get("differences", [])
            )
            detail = initial["why"] if initial.get("why") else f"trained − initial: {diffs or '—'}"
            cells.append(f"**{initial['reading']}** ({initial.get('runs', 0)} seeds; {detail})")
        else:
            cells.append("—")
        for kind in ("quantisation", "last_word", "keep_last"):
            entries = row.get(kind) or []
            if not entries:
                cells.append("—")
            else:
                cells.append(", ".join(_control_cell(e, kind) for e in entries))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_controls(
    runs: Sequence[str], summary_paths: Sequence[str], sample_paths: Sequence[str], controls: Mapping[str, Mapping[str, str]],
    registry_path, markdown_path, json_path,
) -> dict[str, list[dict[str, Any]]]:
    """The ``controls`` rule: for every run that has controls, its claims read against them
    (``controls``: ``{control run: {"of": run, "kind": kind}}``), written as Markdown (one
    section per controlled run) and JSON."""
    import json
    from pathlib import Path

    from rsdyn.core.claims import load_registry
    from rsdyn.core.store import atomic_file
    from rsdyn.report.summary import read_samples

    registry = load_registry(registry_path)
    summaries = {run: json.loads(Path(path).read_text()) for run, path in zip(runs, summary_paths)}
    samples = {run: read_samples(path) for run, path in zip(runs, sample_paths)}
    tables: dict[str, list[dict[str, Any]]] = {}
    for reference in dict.fromkeys(control["of"] for control in controls.values()):
        mine = {run: {"kind": control["kind"], "summary": summaries[run], "samples": samples[run]}
                for run, control in controls.items() if control["of"] == reference}
        tables[reference] = controls_table(registry["claims"], summaries[reference], samples[reference], mine)
    sections = []
    for reference, table in tables.items():
        kinds = ", ".join(f"{run} ({control['kind']})" for run, control in controls.items() if control["of"] == reference)
        sections.append(f"Run `{reference}` against its controls: {kinds}. {controls_counts(table)}\n\n{controls_markdown(table)}")
    with atomic_file(markdown_path) as temp:
        Path(temp).write_text("\n".join(sections))
    with atomic_file(json_path) as temp:
        Path(temp).write_text(json.dumps(tables, indent=2))
    return tables
