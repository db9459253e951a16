"""Fig. 4 A-C: PCA of the residual stream, drawn into given matplotlib axes.

Each function takes arrays as stored in ``pca.zarr`` (see :mod:`rsdyn.geometry.pca`) and one
``Axes``; the Fig. 4 module lays the axes out and adds the teleport panels. C has two
views: the pooled one (R^2 of each sublayer with the pooled PCs) and the within one
(each sublayer's own PCA: participation ratio and PCs for 90 % of its own variance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes

from rsdyn.core.figures import (
    add_sublayer_colourbar,
    draw_trajectory_bundle,
    sublayer_colours,
)


def draw_pca_trajectories(
    ax: Axes,
    projection: np.ndarray,
    explained_variance_ratio: np.ndarray | None = None,
    max_trajectories: int = 300,
    seed: int = 0,
    colourbar: bool = True,
) -> None:
    """Fig. 4A: trajectories (N, 2L, 2) in PC1-PC2 in black, per-sublayer means coloured by depth.

    At most ``max_trajectories`` sequences are drawn (a seeded subset).
    """
    draw_trajectory_bundle(ax, projection, max_trajectories, seed, line_colour="black", line_alpha=0.25, mean_colour="tab:red", mean_width=1.2)
    if explained_variance_ratio is not None:
        ax.set_xlabel(f"PC1 ({100 * explained_variance_ratio[0]:.1f} %)")
        ax.set_ylabel(f"PC2 ({100 * explained_variance_ratio[1]:.1f} %)")
    else:
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    ax.set_title("A  trajectories in PC space")
    if colourbar:
        add_sublayer_colourbar(ax, projection.shape[1])


def draw_cumulative_variance(
    ax: Axes, explained_variance_ratio: np.ndarray, threshold: float = 0.9, spectrum_within: np.ndarray | None = None
) -> None:
    """Fig. 4B: cumulative fraction of the pooled variance against the number of pooled
    components (black), and of each sublayer's own variance against its own components
    (thin, coloured by depth) when ``spectrum_within`` (2L, min(N, D)) is given."""
    if spectrum_within is not None:
        spectrum = np.asarray(spectrum_within, dtype=np.float64)
        totals = spectrum.sum(axis=1, keepdims=True)
        colours = sublayer_colours(len(spectrum))
        k = np.arange(1, spectrum.shape[1] + 1)
        for s in np.flatnonzero(totals[:, 0] > 0):
            ax.plot(k, np.cumsum(spectrum[s]) / totals[s], color=colours[s], lw=0.6, alpha=0.8, zorder=1)
    cumulative = np.cumsum(explained_variance_ratio)
    k = np.arange(1, len(cumulative) + 1)
    ax.plot(k, cumulative, color="black", lw=2.0, label="pooled", zorder=3)
    ax.axhline(threshold, color="grey", ls=":", lw=0.8)
    reached = np.flatnonzero(cumulative >= threshold)
    if reached.size:
        ax.annotate(f"pooled: {reached[0] + 1} PCs", (reached[0] + 1, threshold), xytext=(-6, 8), textcoords="offset points", ha="right")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_title("B  pooled (black), per sublayer" if spectrum_within is not None else "B  pooled variance")


def draw_ev_per_sublayer(
    ax: Axes,
    ev_per_sublayer_curve: np.ndarray,
    sublayer_names: Sequence[str] | None = None,
    extra_k: Sequence[int] = (2, 10),
) -> None:
    """Fig. 4C, pooled view: explained variance (R^2) of each sublayer with all K pooled
    components (bold) and with the first ``extra_k`` (thin), from ``ev_per_sublayer_curve``
    (2L, K). Nothing is clipped: the axis is linear on [-1, 1] and logarithmic below -1
    (R^2 far below 0 where a sublayer's own variance is tiny next to its distance from
    the pooled mean)."""
    n_sublayers, n_components = ev_per_sublayer_curve.shape
    x = np.arange(n_sublayers)
    for k, shade in zip([k for k in extra_k if k < n_components], ("0.72", "0.45", "0.3")):
        ax.plot(x, ev_per_sublayer_curve[:, k - 1], color=shade, lw=1.0, label=f"{k} PCs")
    values = ev_per_sublayer_curve[:, -1]
    ax.plot(x, values, color="black", lw=1.8, label=f"{n_components} PCs", zorder=2)
    ax.scatter(x, values, c=sublayer_colours(n_sublayers), s=14, zorder=3)
    ax.axhline(0, color="grey", lw=0.5)
    finite = ev_per_sublayer_curve[np.isfinite(ev_per_sublayer_curve)]
    lowest = float(finite.min()) if finite.size else 0.0
    ax.set_yscale("symlog", linthresh=1.0, linscale=2.5)
    ax.set_ylim(min(-0.1, lowest * 1.3 if lowest < -1 else lowest - 0.1), 1.05)
    _layer_axis(ax, n_sublayers, sublayer_names)
    ax.set_ylabel("R$^2$ with pooled PCs (log below $-1$)")
    ax.set_title("C  pooled PCs: R$^2$ per sublayer")
    ax.legend(frameon=False, loc="lower right")


def draw_dimensionality_per_sublayer(
    ax: Axes,
    participation_ratio: np.ndarray,
    components_within: np.ndarray,
    components_pooled: np.ndarray | None = None,
    n_components: int | None = None,
    sublayer_names: Sequence[str] | None = None,
    threshold: float = 0.9,
) -> None:
    """Fig. 4C, both views as component counts per sublayer (log axis): the sublayer's own
    PCs for ``threshold`` of its variance and its participation ratio (within view), and
    the pooled PCs it needs for R^2 >= ``threshold`` (pooled view; open triangles at K + 1
    where K pooled PCs are not enough)."""
    n_sublayers = len(participation_ratio)
    x = np.arange(n_sublayers)
    percent = round(100 * threshold)
    within = np.where(np.asarray(components_within) > 0, components_within, np.nan).astype(np.float64)
    ax.plot(x, within, color="tab:blue", lw=1.8, marker="o", ms=3, label=f"own PCs for {percent} %")
    ax.plot(x, participation_ratio, color="tab:blue", lw=1.4, ls="--", label="participation ratio")
    if components_pooled is not None and n_components is not None:
        pooled = np.asarray(components_pooled, dtype=np.float64)
        reached = pooled > 0
        shown = np.where(reached, pooled, n_components + 1)
        ax.plot(x, shown, color="0.35", lw=1.2, label=f"pooled PCs for R$^2$ $\\geq$ {threshold:g}")
        if (~reached).any():
            ax.scatter(x[~reached], shown[~reached], marker="^", facecolor="none", edgecolor="0.35", s=22, zorder=3,
                       label=f"> {n_components} pooled PCs")
    ax.set_yscale("log")
    _layer_axis(ax, n_sublayers, sublayer_names)
    ax.set_ylabel("components")
    ax.set_title("C′  each sublayer's own PCs")
    ax.legend(frameon=False, loc="best")


def _sublayer_axis(ax: Axes, n_sublayers: int, sublayer_names: Sequence[str] | None) -> None:
    step = max(1, n_sublayers // 8)
    ticks = np.arange(0, n_sublayers, step)
    ax.set_xticks(ticks)
    if sublayer_names is not None:
        ax.set_xticklabels([sublayer_names[t] for t in ticks], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("sublayer")


def _layer_axis(ax: Axes, n_sublayers: int, sublayer_names: Sequence[str] | None) -> None:
    """Ticks at the pre-attention sublayer of every k-th layer, labelled with the layer index."""
    n_layers = max(1, n_sublayers // 2)
    step = max(1, int(np.ceil(n_layers / 6)))
    layers = np.arange(0, n_layers, step)
    ax.set_xticks(2 * layers, [str(layer) for layer in layers])
    ax.set_xlabel("layer (pre-attention sublayer)")


def draw_pca_panels(axes: Sequence[Axes], pca: Mapping[str, np.ndarray], sublayer_names: Sequence[str] | None = None, threshold: float = 0.9) -> None:
    """Panels A-C of Fig. 4 into three axes (four with the within view, when ``pca``
    holds it), from ``read_group('pca.zarr')``."""
    draw_pca_trajectories(axes[0], pca["projection"], pca["explained_variance_ratio"])
    draw_cumulative_variance(axes[1], pca["explained_variance_ratio"], threshold, pca.get("spectrum_within"))
    draw_ev_per_sublayer(axes[2], pca["ev_per_sublayer_curve"], sublayer_names)
    if len(axes) > 3 and "participation_ratio" in pca:
        draw_dimensionality_per_sublayer(
            axes[3], pca["participation_ratio"], pca["components_for_90_within"], pca.get("n_components_90"),
            pca["ev_per_sublayer_curve"].shape[1], sublayer_names, threshold,
        )
