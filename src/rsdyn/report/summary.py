"""summary.json: the judged claims of a run, and the descriptive rows beside them.

- ``claims``: the claims table of :mod:`rsdyn.report.claims`, every claim of
  ``config/claims.yaml`` with its pre-registered statistic, interval, p, Holm-adjusted p
  and verdict (the only verdicts a run has);
- ``rows``: descriptive numbers ``{name: {value, paper, definition}}``, some with an
  ``interval`` and what it ``resampled``: other readings of the claims and everything a
  reader compares with the paper, never judged. Each stage contributes them:
  :func:`rsdyn.units.summary.summary_fig1` (Fig. 1, its own rule and
  ``summary_fig1.json``), :func:`rsdyn.population.summary.summary_rotations` (Fig. 2),
  :func:`rsdyn.cae.summary.summary_fig3`, :func:`rsdyn.geometry.pca_summary.summary_fig4_pca`,
  :func:`rsdyn.geometry.teleport_metrics.summary_teleport` and the Jacobian's rows.

This module gathers them and renders them (JSON, TSV, Markdown); ``rsdyn.report.readme``
writes the Markdown tables into README.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsdyn.core.store import atomic_file, open_group, read_group
from rsdyn.core.verdicts import DEFAULT_LEVEL, DEFAULT_RESAMPLES

DEFAULT_SETTINGS = {"bootstrap": DEFAULT_RESAMPLES, "seed": 0}


def fig1_rows(
    activations_path: str | Path,
    unit_stats_path: str | Path,
    layer_stats_path: str | Path,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    density_threshold: float = 0.1,
) -> dict[str, dict[str, Any]]:
    """The Fig. 1 rows; their intervals resample the sequences of ``activations_path``
    ``bootstrap`` times (seeded with ``seed``); ``density_threshold`` is
    ``layer_stats.density_threshold``."""
    import pandas as pd

    from rsdyn.core.verdicts import bootstrap_indices
    from rsdyn.units.resample import resample_store
    from rsdyn.units.summary import summary_fig1

    n_samples = int(open_group(activations_path)["original"].shape[0])
    resampled = resample_store(activations_path, bootstrap_indices(n_samples, bootstrap, seed), density_threshold)
    return summary_fig1(read_group(unit_stats_path), pd.read_csv(layer_stats_path), resampled, bootstrap, seed)


def collect_rows(
    fig1_summary_path: str | Path,
    unit_stats_path: str | Path,
    pca_path: str | Path,
    cae_embedding_path: str | Path,
    teleport_path: str | Path,
    population_path: str | Path | None = None,
    jacobian_path: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every headline row of a run, in the order of the paper's figures (then Fig. 5's,
    when ``jacobian_path`` is given); the Fig. 1 rows come from ``summary_fig1.json``
    (:func:`fig1_rows`, written by the fig1_summary rule). ``settings`` is the run's
    ``summary`` section: bootstrap resamples and seed of every interval."""
    from rsdyn.cae.summary import summary_fig3
    from rsdyn.geometry.pca_summary import summary_fig4_pca
    from rsdyn.geometry.run import read_teleport
    from rsdyn.geometry.teleport_metrics import summary_teleport
    from rsdyn.population.summary import summary_rotations

    rows: dict[str, dict[str, Any]] = dict(json.loads(Path(fig1_summary_path).read_text())["rows"])
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    resampling = {"n_resamples": int(settings["bootstrap"]), "seed": int(settings["seed"])}
    population = read_group(population_path) if population_path else None
    rows.update(summary_rotations(read_group(unit_stats_path), population, **resampling))
    rows.update(summary_fig3(read_group(cae_embedding_path), **resampling))
    threshold = float(open_group(pca_path).attrs.get("variance_threshold", 0.9))
    rows.update(summary_fig4_pca(read_group(pca_path), threshold=threshold, **resampling))
    rows.update(summary_teleport(read_teleport(teleport_path), **resampling))
    if jacobian_path is not None:
        from rsdyn.jacobian.run import read_jacobian
        from rsdyn.jacobian.summary import summary_jacobian

        rows.update(summary_jacobian(*read_jacobian(jacobian_path), **resampling))
    return rows


#: the keys that make a row a judgement; rows are descriptive, only claims are judged
JUDGEMENT_KEYS = ("verdict", "expected")


def descriptive(rows: Mapping[str, dict]) -> dict[str, dict]:
    """The rows without any verdict (theirs and their pairs'): other readings are reported,
    never judged; the claims table holds the verdicts."""
    out = {}
    for name, row in rows.items():
        row = {key: value for key, value in row.items() if key not in JUDGEMENT_KEYS}
        if isinstance(row.get("pairs"), Mapping):
            row["pairs"] = {pair: {k: v for k, v in entry.items() if k not in JUDGEMENT_KEYS} for pair, entry in row["pairs"].items()}
        out[name] = row
    return out


def build_summary(
    run: str, activations_path: str | Path, rows: Mapping[str, dict], settings: Mapping[str, Any] | None = None,
    claims: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary document: run, model and data provenance, the bootstrap settings, the
    judged claims (when given) and the descriptive rows."""
    attrs = dict(open_group(activations_path).attrs)
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    document = {
        "run": run,
        "model": {key: attrs.get(key) for key in ("model_name", "model_id", "model_revision", "family", "n_layers", "d_model", "dtype")},
        "n_samples": attrs.get("n_samples"),
        "corpus": attrs.get("corpus_source"),
        "paper": "Fernando & Guitchounts 2025, arXiv 2502.12131 (Llama 3.1 8B, N = 1000)",
        "bootstrap": {"resamples": int(settings["bootstrap"]), "seed": int(settings["seed"]), "level": DEFAULT_LEVEL},
    }
    if claims is not None:
        judged = [claim for claim in claims if claim.get("verdict")]
        document["claims_settings"] = {
            "registry": str(settings.get("claims", "config/claims.yaml")),
            "resamples": int(settings.get("claims_resamples", 0)),
            "stability_seeds": int(settings.get("stability_seeds", 1)),
            "judged": len(judged),
            "multiplicity": "Holm step-down across the judged claims, each family (the claim, its opposite, equivalence) separately",
        }
        document["claims"] = list(claims)
    document["rows"] = descriptive(rows)
    return document


def write_summary(summary: Mapping[str, Any], path: str | Path) -> None:
    """Write summary.json atomically."""
    with atomic_file(path) as temp:
        Path(temp).write_text(json.dumps(summary, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def format_value(value: Any) -> str:
    """A compact human rendering of a row value (numbers to 3 significant digits, None as a dash)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def format_interval(row: Mapping[str, Any]) -> str:
    """``[low, high]`` of a comparing row (3 significant digits), else an empty string."""
    interval = row.get("interval")
    if not interval:
        return ""
    return "[" + ", ".join(format_value(v) for v in interval) + "]"


def format_note(row: Mapping[str, Any]) -> str:
    """A row's caveat (``rests on 20 distinct states``), or an empty string."""
    return str(row.get("caveat", ""))


def markdown_table(summary: Mapping[str, Any], with_definitions: bool = False, names=None) -> str:
    """The descriptive rows (all, or ``names``) as a Markdown table:
    quantity | paper | ours | 95 % interval | note (| definition; resampled)."""
    header = "| quantity | paper (Llama 3.1 8B) | ours | 95 % interval | note |" + (" definition |" if with_definitions else "")
    rule = "|---|---|---|---|---|" + ("---|" if with_definitions else "")
    lines = [header, rule]
    for name, row in summary["rows"].items():
        if names is not None and name not in names:
            continue
        cells = [f"`{name}`", format_value(row.get("paper")), format_value(row.get("value")), format_interval(row), format_note(row)]
        if with_definitions:
            definition = str(row.get("definition", ""))
            if row.get("resampled"):
                definition += f" (interval: {row['resampled']})"
            cells.append(definition)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def format_p(value: Any) -> str:
    """A p-value for a table: 3 significant digits, '< 0.001' below."""
    if value is None:
        return ""
    return "< 0.001" if value < 0.001 else f"{value:.2g}"


def markdown_claims(summary: Mapping[str, Any]) -> str:
    """The claims table: claim | the paper's words | statistic | ours [95 % interval] |
    p (Holm) | verdict; a claim the registry cannot compute says why."""
    lines = [
        "| claim | the paper's words (section, figure) | pre-registered statistic | ours [95 % interval] | p (Holm-adjusted) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for claim in summary.get("claims", []):
        where = ", ".join(part for part in (claim.get("section"), f"Fig. {claim['figure']}" if claim.get("figure") else None) if part)
        words = f"\"{claim['quote']}\" ({where})"
        if claim.get("verdict"):
            test = "within" if claim["test"] == "equivalence" else claim["direction"]
            expected = f"{test} {format_value(float(claim['null_value']))} ± {format_value(float(claim['margin']))}" if claim["test"] == "equivalence" or claim["margin"] else f"{test} {format_value(float(claim['null_value']))}"
            statistic = f"`{claim['statistic'].split('.', 1)[1]}` ({expected}; {claim['unit'].replace('_', ' ')})"
            ours = f"{format_value(claim.get('value'))} {format_interval(claim)}"
            p_text = f"{format_p(claim.get('p'))} ({format_p(claim.get('p_holm'))})"
            verdict = f"**{claim['verdict']}**" + ("" if claim.get("stable", True) else " (unstable over bootstrap seeds)")
            if claim.get("baseline") and not claim.get("baseline_beaten", True):
                verdict += f"; does not beat {claim['baseline'].get('what', 'the baseline')}"
        else:
            statistic, ours, p_text, verdict = "—", "—", "", f"not computed: {claim.get('not_computed', '')}"
        label = claim["id"] + (" (beyond the paper)" if claim["source"] == "beyond" else "")
        cells = [f"`{label}`", words, statistic, ours, p_text, verdict]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


TABLE_COLUMNS = ["quantity", "paper (Llama 3.1 8B)", "ours", "interval_low", "interval_high", "caveat", "resampled", "definition"]


def write_table(summary: Mapping[str, Any], path: str | Path) -> None:
    """The descriptive rows as a tab-separated table (``TABLE_COLUMNS``), atomically."""
    import csv

    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(TABLE_COLUMNS)
        for name, row in summary["rows"].items():
            low, high = row.get("interval") or ("", "")
            writer.writerow([name, format_value(row.get("paper")), format_value(row.get("value")),
                             "" if low in ("", None) else format_value(low), "" if high in ("", None) else format_value(high),
                             row.get("caveat", ""), row.get("resampled", ""), row.get("definition", "")])


CLAIM_COLUMNS = ["claim", "source", "section", "statistic", "value", "interval_low", "interval_high", "p", "p_holm",
                 "verdict", "stable", "test", "direction", "null_value", "margin", "resampled", "quote"]


def write_claims_table(summary: Mapping[str, Any], path: str | Path) -> None:
    """The claims as a tab-separated table (``CLAIM_COLUMNS``), atomically."""
    import csv

    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(CLAIM_COLUMNS)
        for claim in summary.get("claims", []):
            low, high = claim.get("interval") or ("", "")
            writer.writerow([
                claim["id"], claim["source"], claim["section"], claim.get("statistic") or "", format_value(claim.get("value")),
                "" if low in ("", None) else format_value(low), "" if high in ("", None) else format_value(high),
                "" if claim.get("p") is None else format_value(claim["p"]), "" if claim.get("p_holm") is None else format_value(claim["p_holm"]),
                claim.get("verdict") or ("not computed: " + claim.get("not_computed", "")), claim.get("stable", ""),
                claim.get("test", ""), claim.get("direction", ""), claim.get("null_value", ""), claim.get("margin", ""),
                claim.get("resampled", ""), claim["quote"],
            ])


def write_samples(samples: Mapping[str, Any], path: str | Path) -> None:
    """Each judged claim's value and resamples (``claims.npz``), atomically."""
    import numpy as np

    with atomic_file(path) as temp, open(temp, "wb") as handle:
        np.savez(handle, **{key: np.asarray(value) for key, value in samples.items()})


def read_samples(path: str | Path) -> dict[str, Any]:
    """``claims.npz`` as ``{id: (B,) resamples, id:value: value}``."""
    import numpy as np

    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def run_fig1_summary(
    run: str, activations_path, unit_stats_path, layer_stats_path, out_path, settings: Mapping[str, Any], density_threshold: float
) -> None:
    """Rule ``fig1_summary``: the Fig. 1 rows (:func:`fig1_rows`; ``settings`` is the run's
    ``summary`` section) -> ``summary_fig1.json``."""
    import logging

    rows = fig1_rows(
        activations_path, unit_stats_path, layer_stats_path,
        bootstrap=settings["bootstrap"], seed=settings["seed"], density_threshold=density_threshold,
    )
    write_summary(build_summary(run, activations_path, rows, settings), out_path)
    logging.getLogger(__name__).info(
        "wrote %d Fig. 1 rows (%d with a verdict)", len(rows), sum(1 for row in rows.values() if row.get("verdict"))
    )


def run_summary(run: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any], settings: Mapping[str, Any], threads: int = 1) -> None:
    """Rule ``summary``: every row of a run (:func:`collect_rows`) -> ``summary.json`` and
    ``summary.tsv``, and the run's resolved ``settings`` -> ``run_config.yaml``.

    ``inputs`` names the stores (``activations``, ``fig1``, ``unit_stats``, ``layer_stats``,
    ``pca``, ``cae``, ``teleport``, ``population``, ``jacobian``) and the claims registry
    (``claims``); ``outputs`` the files (``json``, ``table``, ``claims``, ``samples``,
    ``config``). ``threads``: processes for the claims' bootstrap (the numbers do not
    depend on it)."""
    import logging

    import yaml

    from rsdyn.report.claims import claims_table

    rows = collect_rows(
        inputs["fig1"], inputs["unit_stats"], inputs["pca"], Path(inputs["cae"]) / "embedding.zarr", inputs["teleport"],
        inputs["population"], inputs["jacobian"], settings["summary"],
    )
    stores = {key: inputs[key] for key in ("activations", "unit_stats", "layer_stats", "pca", "cae", "teleport", "population", "jacobian")}
    samples: dict[str, Any] = {}
    claims = claims_table(stores, settings["summary"], inputs["claims"], samples, workers=threads)
    write_samples(samples, outputs["samples"])
    summary = build_summary(run, inputs["activations"], rows, settings["summary"], claims)
    write_summary(summary, outputs["json"])
    write_table(summary, outputs["table"])
    write_claims_table(summary, outputs["claims"])
    with atomic_file(outputs["config"]) as temp:
        Path(temp).write_text(yaml.safe_dump(dict(settings), sort_keys=False))
    counts = {verdict: sum(1 for claim in claims if claim.get("verdict") == verdict) for verdict in {c.get("verdict") for c in claims} if verdict}
    logging.getLogger(__name__).info("wrote %d descriptive rows and %d claims: %s", len(rows), len(claims), counts)


def main(argv: list[str] | None = None) -> None:
    """``python -m rsdyn.report.summary results/{run}/summary.json [--definitions]``: the
    claims table, then the descriptive rows, as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("summary", help="a summary.json written by the summary rule")
    parser.add_argument("--definitions", action="store_true", help="add each row's definition")
    args = parser.parse_args(argv)
    summary = json.loads(Path(args.summary).read_text())
    if summary.get("claims"):
        print(markdown_claims(summary))
    print(markdown_table(summary, with_definitions=args.definitions), end="")


if __name__ == "__main__":
    main()
