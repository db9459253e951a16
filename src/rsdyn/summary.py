"""summary.json: the headline numbers of a run beside the paper's, and their table.

Each stage module contributes rows ``{name: {value, paper, definition}}``
(``layer_stats.summary_fig12``, ``cae.summary_fig3``, ``pca.summary_fig4_pca``,
``teleport.summary_teleport``); this module gathers them and renders them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsdyn.store import atomic_file, open_group, read_group


def collect_rows(
    unit_stats_path: str | Path,
    layer_stats_path: str | Path,
    pca_path: str | Path,
    cae_embedding_path: str | Path,
    teleport_path: str | Path,
    population_path: str | Path | None = None,
    jacobian_path: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Every headline row of a run, in the order of the paper's figures (then Fig. 5's,
    when ``jacobian_path`` is given)."""
    import pandas as pd

    from rsdyn.cae import summary_fig3
    from rsdyn.layer_stats import summary_fig12
    from rsdyn.pca import summary_fig4_pca
    from rsdyn.rotation_summary import summary_rotations
    from rsdyn.teleport import read_teleport, summary_teleport

    rows: dict[str, dict[str, Any]] = {}
    rows.update(summary_fig12(read_group(unit_stats_path), pd.read_csv(layer_stats_path)))
    rows.update(summary_rotations(read_group(unit_stats_path), read_group(population_path) if population_path else None))
    rows.update(summary_fig3(read_group(cae_embedding_path)))
    threshold = float(open_group(pca_path).attrs.get("variance_threshold", 0.9))
    rows.update(summary_fig4_pca(read_group(pca_path), threshold=threshold))
    rows.update(summary_teleport(read_teleport(teleport_path)))
    if jacobian_path is not None:
        from rsdyn.jacobian import read_jacobian, summary_jacobian

        rows.update(summary_jacobian(*read_jacobian(jacobian_path)))
    return rows


def build_summary(run: str, activations_path: str | Path, rows: Mapping[str, dict]) -> dict[str, Any]:
    """The summary document: run, model and data provenance, and the rows."""
    attrs = dict(open_group(activations_path).attrs)
    return {
        "run": run,
        "model": {key: attrs.get(key) for key in ("model_name", "model_id", "model_revision", "family", "n_layers", "d_model", "dtype")},
        "n_samples": attrs.get("n_samples"),
        "corpus": attrs.get("corpus_source"),
        "paper": "Fernando & Guitchounts 2025, arXiv 2502.12131 (Llama 3.1 8B, N = 1000)",
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
    """A compact human rendering of a row value (numbers to 3 significant digits)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def markdown_table(summary: Mapping[str, Any], with_definitions: bool = False) -> str:
    """The rows as a Markdown table: quantity | paper | ours (| definition)."""
    header = "| quantity | paper (Llama 3.1 8B) | ours |" + (" definition |" if with_definitions else "")
    rule = "|---|---|---|" + ("---|" if with_definitions else "")
    lines = [header, rule]
    for name, row in summary["rows"].items():
        cells = [f"`{name}`", format_value(row.get("paper")), format_value(row.get("value"))]
        if with_definitions:
            cells.append(str(row.get("definition", "")).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(summary: Mapping[str, Any], path: str | Path) -> None:
    """The rows as a tab-separated table (quantity, paper, ours, definition), atomically."""
    import csv

    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["quantity", "paper (Llama 3.1 8B)", "ours", "definition"])
        for name, row in summary["rows"].items():
            writer.writerow([name, format_value(row.get("paper")), format_value(row.get("value")), row.get("definition", "")])


def main(argv: list[str] | None = None) -> None:
    """``python -m rsdyn.summary results/{run}/summary.json [--definitions]``: the Markdown table."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("summary", help="a summary.json written by the summary rule")
    parser.add_argument("--definitions", action="store_true", help="add each row's definition")
    args = parser.parse_args(argv)
    print(markdown_table(json.loads(Path(args.summary).read_text()), with_definitions=args.definitions), end="")


if __name__ == "__main__":
    main()
