"""The cross-model figure: the per-depth curves of Figs. 1, 4 and 5 of every run overlaid on
normalised depth (sublayer / 2L), one colour per model. Fig. 5: the spectral quantities of
the trained weights, within-layer (attention) transitions solid, cross-layer (MLP) dotted;
the cumulative rank and the Lyapunov exponent for trained (solid) and initial (dashed)
weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from matplotlib.figure import Figure  # noqa: E402

from rsdyn.core.figures import legend_entries  # noqa: E402

#: (curve name, panel title, log y axis, lowest y shown or None)
PANELS = (
    ("correlation", "Fig. 1 · median r(h_s, h_s+1) over units", False, None),
    ("mi_kde", "Fig. 1 · median MI (KDE) over units", False, None),
    ("cosine", "Fig. 1 · cosine(h_s, h_s+1)", False, None),
    ("velocity", "Fig. 1 · velocity ‖h_s+1 − h_s‖", True, None),
    ("norm", "Fig. 1 · ‖h_s‖", True, None),
    ("density", "Fig. 1 · density", False, None),
    ("pca_ev", "Fig. 4 · R² per sublayer with all PCs (clipped at −1)", False, -1.0),
    ("teleport_mse", "Fig. 4 · teleport MSE to control", True, None),
    ("update_rotation_index", "Fig. 5 · rotation index of J − I (trained)", False, None),
    ("update_henrici", "Fig. 5 · Henrici departure of J − I (trained)", False, None),
    ("update_antisymmetric_share", "Fig. 5 · antisymmetric share of J − I (trained)", False, None),
    ("rotation_index", "Fig. 5 · rotation index of J (trained)", False, None),
    ("henrici", "Fig. 5 · Henrici departure of J (trained)", False, None),
    ("cumulative_rank_fraction", "Fig. 5 · eff. rank of J_s…J_0 / D", False, None),
    ("top_lyapunov", "Fig. 5 · top finite-depth Lyapunov exponent", False, None),
)
#: line style per weights / transition type (the part of a curve name after ":")
LINE_STYLES = {"trained": "-", "initial": "--", "trained, within": "-", "trained, cross": ":"}


def fig_compare(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], titles: Mapping[str, str] | None = None) -> Figure:
    """``curves``: per run, ``{curve name: (normalised depth, values)}`` as
    :func:`rsdyn.report.compare.run_curves` returns (Fig. 5 curves named ``name:weights``)."""
    titles = titles or {}
    columns = 4
    rows = -(-len(PANELS) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    axes = axes.ravel()
    for ax, (name, title, log_scale, lowest) in zip(axes, PANELS):
        drawn = False
        for index, (run, run_curves) in enumerate(curves.items()):
            colour = f"C{index}"
            label = titles.get(run, run)
            for key, (x, y) in run_curves.items():
                base, _, weights = key.partition(":")
                if base != name:
                    continue
                values = np.asarray(y, dtype=np.float64)
                if log_scale:
                    values = np.where(values > 0, values, np.nan)
                ax.plot(
                    x, values, color=colour, ls=LINE_STYLES.get(weights, "-"), lw=1.2, marker="." if len(x) < 12 else None,
                    label=f"{label}{f' ({weights})' if weights else ''}",
                )
                drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("normalised depth (sublayer / 2L)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, 1)
        if log_scale and drawn:
            ax.set_yscale("log")
        if lowest is not None and drawn and ax.get_ylim()[0] < lowest:
            highest = max(float(np.nanmax(line.get_ydata())) for line in ax.get_lines())
            ax.set_ylim(lowest, highest + 0.05 * (highest - lowest))
        if not drawn:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.5")
    for ax in axes[len(PANELS) :]:
        ax.axis("off")
    axes[-1].legend(*legend_entries(axes), fontsize=8, frameon=False, loc="center")
    figure.suptitle("Across models: per-depth curves of Figs. 1, 4 and 5 on normalised depth", fontsize=11)
    return figure


def save_fig_compare(curves, pdf_path, png_path, titles: Mapping[str, str] | None = None, dpi: int = 150) -> None:
    """Draw :func:`fig_compare` and write it atomically as PDF and PNG."""
    from rsdyn.core.store import atomic_file

    figure = fig_compare(curves, titles)
    for path, kwargs in ((pdf_path, {}), (png_path, {"dpi": dpi})):
        with atomic_file(path) as temp:
            figure.savefig(temp, format=Path(path).suffix[1:], **kwargs)
    plt.close(figure)
