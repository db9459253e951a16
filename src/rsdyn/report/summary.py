"""summary.json: the headline numbers of a run beside the paper's, and their tables.

Each stage module contributes rows ``{name: {value, paper, definition}}``; a row that
compares two things adds ``interval``, ``level``, ``expected``, ``resampled`` and
``verdict`` (``rsdyn.core.verdicts``). ``summary_fig1.summary_fig1`` (Fig. 1, bootstrap over
sequences from ``activations.zarr``, its own rule and ``summary_fig1.json``),
``rotation_summary.summary_rotations`` (Fig. 2),
``cae.summary_fig3``, ``pca.summary_fig4_pca`` and ``teleport.summary_teleport``; this
module gathers them and renders them (JSON, TSV, Markdown). ``rsdyn.report.readme`` writes the
Markdown tables into README.md.
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


def build_summary(
    run: str, activations_path: str | Path, rows: Mapping[str, dict], settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The summary document: run, model and data provenance, the bootstrap settings, and the rows."""
    attrs = dict(open_group(activations_path).attrs)
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    return {
        "run": run,
        "model": {key: attrs.get(key) for key in ("model_name", "model_id", "model_revision", "family", "n_layers", "d_model", "dtype")},
        "n_samples": attrs.get("n_samples"),
        "corpus": attrs.get("corpus_source"),
        "paper": "Fernando & Guitchounts 2025, arXiv 2502.12131 (Llama 3.1 8B, N = 1000)",
        "bootstrap": {"resamples": int(settings["bootstrap"]), "seed": int(settings["seed"]), "level": DEFAULT_LEVEL},
        "rows": dict(rows),
    }


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


def format_verdict(row: Mapping[str, Any]) -> str:
    """The verdict with the direction it was judged against, e.g. ``reproduced (> 0)``, and
    the row's caveat if it has one (``reproduced (> 0.8); rests on 20 distinct states``)."""
    parts = []
    if row.get("verdict"):
        parts.append(f"{row['verdict']} ({row['expected']})" if row.get("expected") else str(row["verdict"]))
    if row.get("caveat"):
        parts.append(str(row["caveat"]))
    return "; ".join(parts)


def markdown_table(summary: Mapping[str, Any], with_definitions: bool = False, names=None) -> str:
    """The rows (all, or ``names``) as a Markdown table:
    quantity | paper | ours | 95 % interval | verdict (| definition; resampled)."""
    header = "| quantity | paper (Llama 3.1 8B) | ours | 95 % interval | verdict |" + (" definition |" if with_definitions else "")
    rule = "|---|---|---|---|---|" + ("---|" if with_definitions else "")
    lines = [header, rule]
    for name, row in summary["rows"].items():
        if names is not None and name not in names:
            continue
        cells = [f"`{name}`", format_value(row.get("paper")), format_value(row.get("value")),
                 format_interval(row), format_verdict(row)]
        if with_definitions:
            definition = str(row.get("definition", ""))
            if row.get("resampled"):
                definition += f" (interval: {row['resampled']})"
            cells.append(definition)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


TABLE_COLUMNS = ["quantity", "paper (Llama 3.1 8B)", "ours", "interval_low", "interval_high", "verdict", "expected", "caveat",
                 "resampled", "definition"]


def write_table(summary: Mapping[str, Any], path: str | Path) -> None:
    """The rows as a tab-separated table (``TABLE_COLUMNS``), atomically."""
    import csv

    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(TABLE_COLUMNS)
        for name, row in summary["rows"].items():
            low, high = row.get("interval") or ("", "")
            writer.writerow([name, format_value(row.get("paper")), format_value(row.get("value")),
                             "" if low in ("", None) else format_value(low), "" if high in ("", None) else format_value(high),
                             row.get("verdict", ""), row.get("expected", ""), row.get("caveat", ""), row.get("resampled", ""),
                             row.get("definition", "")])


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


def run_summary(run: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Rule ``summary``: every row of a run (:func:`collect_rows`) -> ``summary.json`` and
    ``summary.tsv``, and the run's resolved ``settings`` -> ``run_config.yaml``.

    ``inputs`` names the stores (``activations``, ``fig1``, ``unit_stats``, ``pca``,
    ``cae``, ``teleport``, ``population``, ``jacobian``); ``outputs`` the files (``json``,
    ``table``, ``config``)."""
    import logging

    import yaml

    rows = collect_rows(
        inputs["fig1"], inputs["unit_stats"], inputs["pca"], Path(inputs["cae"]) / "embedding.zarr", inputs["teleport"],
        inputs["population"], inputs["jacobian"], settings["summary"],
    )
    summary = build_summary(run, inputs["activations"], rows, settings["summary"])
    write_summary(summary, outputs["json"])
    write_table(summary, outputs["table"])
    with atomic_file(outputs["config"]) as temp:
        Path(temp).write_text(yaml.safe_dump(dict(settings), sort_keys=False))
    logging.getLogger(__name__).info(
        "wrote %d summary rows (%d with a verdict)", len(rows), sum(1 for row in rows.values() if row.get("verdict"))
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m rsdyn.report.summary results/{run}/summary.json [--definitions]``: the Markdown table."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("summary", help="a summary.json written by the summary rule")
    parser.add_argument("--definitions", action="store_true", help="add each row's definition")
    args = parser.parse_args(argv)
    print(markdown_table(json.loads(Path(args.summary).read_text()), with_definitions=args.definitions), end="")


if __name__ == "__main__":
    main()
