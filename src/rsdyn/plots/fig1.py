"""Figure 1: density, continuity, velocity and mutual information over depth.

Panels (PAPER.md Fig. 1): B mean activation per unit and sublayer (units sorted by
their mean at the last sublayer); C Pearson r between consecutive sublayers per unit,
and its median per layer by transition type; D per-unit density of r over all
sublayer pairs; E cosine similarity and F velocity by transition type; G KDE mutual
information per unit and transition; H mean MI per transition for the three
estimators. Solid lines: original text; dashed: token-shuffled control.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rsdyn.store import atomic_path

CONDITION_STYLE = {"original": "-", "shuffled": "--"}
TYPE_COLOR = {"within": "tab:blue", "cross": "tab:orange"}
ESTIMATOR_COLOR = {"mi_kde": "tab:purple", "mi_ksg": "tab:green", "mi_gaussian": "0.45"}
ESTIMATOR_WIDTH = {"mi_kde": 2.0, "mi_ksg": 1.2, "mi_gaussian": 0.8}
ESTIMATOR_LABEL = {"mi_kde": "KDE (paper)", "mi_ksg": "KSG", "mi_gaussian": "Gaussian, $-\\frac{1}{2}\\ln(1-r^2)$"}


def save_figure(figure: Figure, paths: Sequence[str | Path], dpi: int = 150) -> None:
    """Write ``figure`` to each path (format from the extension), atomically."""
    for path in paths:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=dpi, bbox_inches="tight")


def _label(ax, letter: str) -> None:
    ax.text(-0.12, 1.04, letter, transform=ax.transAxes, fontsize=13, fontweight="bold", va="bottom")


def _layer_ticks(ax, n_positions: int, per_layer: int = 2, axis: str = "x") -> None:
    """Ticks at the first position of every k-th layer, labelled with the layer index."""
    n_layers = max(1, n_positions // per_layer)
    step = max(1, int(np.ceil(n_layers / 8)))
    layers = np.arange(0, n_layers, step)
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    set_ticks(layers * per_layer, [str(layer) for layer in layers])


def _image(fig, ax, values, cmap, label, vmin=None, vmax=None):
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
    fig.colorbar(image, ax=ax, label=label, fraction=0.046, pad=0.03)
    return image


def _by_type(values: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{type: (layer index, values)} for within (even transitions) and cross (odd)."""
    return {kind: (np.arange(len(values[start::2])), values[start::2]) for kind, start in (("within", 0), ("cross", 1))}


def _transition_lines(ax, table: pd.DataFrame, column: str) -> None:
    for condition, style in CONDITION_STYLE.items():
        rows = table[(table["kind"] == "transition") & (table["condition"] == condition)].sort_values("index")
        if rows.empty:
            continue
        mean = rows[f"{column}_mean"].to_numpy()
        sem = rows[f"{column}_sem"].to_numpy()
        for kind, (layers, values) in _by_type(mean).items():
            errors = _by_type(sem)[kind][1]
            ax.plot(layers, values, style, color=TYPE_COLOR[kind], label=f"{kind}, {condition}")
            ax.fill_between(layers, values - errors, values + errors, color=TYPE_COLOR[kind], alpha=0.2, lw=0)
    ax.set_xlabel("layer l")


def make_fig1(unit_stats: Mapping, layer_table: pd.DataFrame, title: str = "") -> Figure:
    """Figure 1 from ``read_group(unit_stats.zarr)`` and the ``layer_stats.csv`` table.

    Transitions that are undefined for every unit (a sublayer constant across samples)
    are left blank.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN transitions
        return _draw_fig1(unit_stats, layer_table, title)


def _draw_fig1(unit_stats: Mapping, layer_table: pd.DataFrame, title: str) -> Figure:
    original = unit_stats["original"]
    mean_activation = original["mean_activation"]  # (S, D)
    n_sublayers, n_units = mean_activation.shape
    fig = Figure(figsize=(20, 9.5), layout="constrained")
    axes = fig.subplots(2, 4)

    ax = axes[0, 0]
    order = np.argsort(mean_activation[-1])
    limit = np.percentile(np.abs(mean_activation), 99) or 1.0
    _image(fig, ax, mean_activation[:, order].T, "RdBu_r", "mean activation over samples", -limit, limit)
    ax.set(title="Mean activation (units sorted by last sublayer)", xlabel="layer (2 sublayers each)", ylabel="unit (sorted)")
    _layer_ticks(ax, n_sublayers)
    _label(ax, "B")

    r = original["corr_consecutive"]  # (T, D)
    unit_order = np.argsort(np.nanmean(r, axis=0))
    ax = axes[0, 1]
    _image(fig, ax, r[:, unit_order].T, "viridis", "Pearson r (sublayer l vs l+1)", max(0.0, float(np.nanpercentile(r, 1))), 1.0)
    ax.set(title="Consecutive-sublayer correlation per unit", xlabel="transition (layer)", ylabel="unit (sorted by mean r)")
    _layer_ticks(ax, r.shape[0] + 1)
    _label(ax, "C")

    ax = axes[0, 2]
    for condition, style in CONDITION_STYLE.items():
        median = np.nanmedian(unit_stats[condition]["corr_consecutive"], axis=1)
        for kind, (layers, values) in _by_type(median).items():
            ax.plot(layers, values, style, color=TYPE_COLOR[kind], label=f"{kind}, {condition}")
    q25, q75 = np.nanpercentile(r, [25, 75], axis=1)
    for kind, (layers, low) in _by_type(q25).items():
        ax.fill_between(layers, low, _by_type(q75)[kind][1], color=TYPE_COLOR[kind], alpha=0.15, lw=0)
    ax.set(title="Median r over units (band: IQR, original)", xlabel="layer l", ylabel="Pearson r")
    ax.legend(fontsize=8, title="within: pre-attn→pre-MLP\ncross: pre-MLP→next pre-attn", title_fontsize=7)
    _label(ax, "C'")

    ax = axes[0, 3]
    hist = original["corr_pairs_hist"]  # (D, bins)
    bins = hist.shape[1]
    pair_order = np.argsort(hist @ (np.arange(bins) + 0.5))
    image = ax.imshow(hist[pair_order], aspect="auto", interpolation="nearest", cmap="magma", origin="lower", extent=(0, 1, 0, n_units))
    fig.colorbar(image, ax=ax, label="fraction of sublayer pairs", fraction=0.046, pad=0.03)
    ax.set(title="r over all sublayer pairs l < m", xlabel="Pearson r", ylabel="unit (sorted by mean r)")
    _label(ax, "D")

    ax = axes[1, 0]
    _transition_lines(ax, layer_table, "cosine")
    ax.set(title="Cosine similarity of consecutive RS vectors", ylabel="cosine similarity (mean ± s.e.m.)")
    ax.legend(fontsize=8)
    _label(ax, "E")

    ax = axes[1, 1]
    _transition_lines(ax, layer_table, "velocity")
    ax.set(title="Velocity $\\|h_{l+1} - h_l\\|_2$", ylabel="velocity (activation units, mean ± s.e.m.)")
    ax.legend(fontsize=8)
    _label(ax, "F")

    ax = axes[1, 2]
    mi = original["mi_kde"]
    _image(fig, ax, mi[:, unit_order].T, "viridis", "MI (nats, Gaussian KDE)", 0.0, float(np.nanpercentile(mi, 99)))
    ax.set(title="MI between consecutive sublayers per unit", xlabel="transition (layer)", ylabel="unit (sorted as C)")
    _layer_ticks(ax, mi.shape[0] + 1)
    _label(ax, "G")

    ax = axes[1, 3]
    for estimator in ("mi_gaussian", "mi_ksg", "mi_kde"):  # the paper's estimator on top
        for condition, style in CONDITION_STYLE.items():
            values = unit_stats[condition][estimator]
            mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=1)
            ax.plot(mean, style, color=ESTIMATOR_COLOR[estimator], lw=ESTIMATOR_WIDTH[estimator],
                    alpha=1.0 if condition == "original" else 0.7,
                    label=ESTIMATOR_LABEL[estimator] if condition == "original" else None)
    ax.plot([], [], "k-", label="original")
    ax.plot([], [], "k--", label="shuffled")
    ax.set(title="Mean MI over units per transition (even: within, odd: cross)", xlabel="transition (layer)", ylabel="MI (nats)")
    _layer_ticks(ax, mi.shape[0] + 1)
    ax.legend(fontsize=8)
    _label(ax, "H")

    if title:
        fig.suptitle(title)
    return fig
