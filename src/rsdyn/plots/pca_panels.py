"""Fig. 4 A-C: PCA of the pooled residual stream, drawn into given matplotlib axes.

Each function takes arrays as stored in ``pca.zarr`` (see :mod:`rsdyn.pca`) and one
``Axes``; the Fig. 4 module lays the axes out and adds the teleport panels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes


def sublayer_colours(n_sublayers: int, cmap: str = "viridis") -> np.ndarray:
    """One RGBA colour per sublayer, early (dark) to late (bright)."""
    return mpl.colormaps[cmap](np.linspace(0, 1, n_sublayers))


def add_sublayer_colourbar(ax: Axes, n_sublayers: int, cmap: str = "viridis") -> None:
    """A colour bar of the sublayer index beside ``ax``."""
    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, n_sublayers - 1), cmap=cmap)
    ax.figure.colorbar(mappable, ax=ax, label="sublayer", fraction=0.046, pad=0.03)


def draw_trajectory_bundle(
    ax: Axes,
    trajectories: np.ndarray,
    max_trajectories: int,
    seed: int = 0,
    line_colour: str = "0.8",
    line_alpha: float = 1.0,
    mean_colour: str = "black",
    mean_width: float = 1.0,
    marker_size: float = 22,
) -> None:
    """Trajectories (N, 2L, 2) as thin lines (a seeded subset of at most ``max_trajectories``)
    under their per-sublayer mean, a line with points coloured by sublayer."""
    n_samples, n_sublayers, _ = trajectories.shape
    rows = np.arange(n_samples)
    if n_samples > max_trajectories:
        rows = np.sort(np.random.default_rng(seed).choice(n_samples, max_trajectories, replace=False))
    for row in rows:
        ax.plot(trajectories[row, :, 0], trajectories[row, :, 1], color=line_colour, lw=0.3, alpha=line_alpha, zorder=1)
    means = trajectories.mean(axis=0)
    ax.plot(means[:, 0], means[:, 1], color=mean_colour, lw=mean_width, zorder=3)
    ax.scatter(means[:, 0], means[:, 1], c=sublayer_colours(n_sublayers), s=marker_size, edgecolor="white", lw=0.4, zorder=4)


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


def draw_cumulative_variance(ax: Axes, explained_variance_ratio: np.ndarray, threshold: float = 0.9) -> None:
    """Fig. 4B: cumulative fraction of pooled variance against the number of components."""
    cumulative = np.cumsum(explained_variance_ratio)
    k = np.arange(1, len(cumulative) + 1)
    ax.plot(k, cumulative, color="black", lw=1.2)
    ax.axhline(threshold, color="grey", ls=":", lw=0.8)
    reached = np.flatnonzero(cumulative >= threshold)
    if reached.size:
        ax.axvline(reached[0] + 1, color="grey", ls=":", lw=0.8)
        ax.annotate(f"{reached[0] + 1} PCs", (reached[0] + 1, threshold), xytext=(4, -12), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_title("B  pooled variance")


def draw_ev_per_sublayer(
    ax: Axes,
    ev_per_sublayer_curve: np.ndarray,
    sublayer_names: Sequence[str] | None = None,
    extra_k: Sequence[int] = (2, 10),
) -> None:
    """Fig. 4C: explained variance (R^2) of each sublayer with all K components (bold),
    and with the first ``extra_k`` components (thin), from ``ev_per_sublayer_curve`` (2L, K)."""
    n_sublayers, n_components = ev_per_sublayer_curve.shape
    x = np.arange(n_sublayers)
    floor = -1.0
    for k, shade in zip([k for k in extra_k if k < n_components], ("0.75", "0.5", "0.3")):
        ax.plot(x, np.maximum(ev_per_sublayer_curve[:, k - 1], floor), color=shade, lw=0.9, label=f"{k} PCs")
    draw_clipped_profile(ax, ev_per_sublayer_curve[:, -1], floor=floor, label=f"{n_components} PCs")
    lowest = min(float(np.nanmin(line.get_ydata())) for line in ax.lines)
    ax.set_ylim(min(0.0, lowest) - 0.05, 1.05)
    _sublayer_axis(ax, n_sublayers, sublayer_names)
    ax.set_ylabel("explained variance per sublayer")
    ax.set_title(f"C  variance explained with {n_components} PCs")
    ax.legend(fontsize=7, frameon=False, loc="lower right")


def draw_clipped_profile(ax: Axes, values: np.ndarray, floor: float = -1.0, label: str | None = None) -> None:
    """A per-sublayer profile in black with depth-coloured points; values below ``floor``
    (R^2 of sublayers of almost no variance) are drawn at ``floor`` as open triangles."""
    x = np.arange(len(values))
    shown = np.maximum(values, floor)
    low = values < floor
    ax.plot(x, shown, color="black", lw=1.3, label=label)
    colours = sublayer_colours(len(values))
    ax.scatter(x[~low], shown[~low], c=colours[~low], s=14, zorder=3)
    if low.any():
        ax.scatter(x[low], shown[low], marker="v", facecolor="none", edgecolor="tab:red", s=30, zorder=3, label=f"< {floor:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(min(0.0, float(np.nanmin(shown))) - 0.05, 1.05)


def _sublayer_axis(ax: Axes, n_sublayers: int, sublayer_names: Sequence[str] | None) -> None:
    step = max(1, n_sublayers // 8)
    ticks = np.arange(0, n_sublayers, step)
    ax.set_xticks(ticks)
    if sublayer_names is not None:
        ax.set_xticklabels([sublayer_names[t] for t in ticks], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("sublayer")


def draw_pca_panels(axes: Sequence[Axes], pca: Mapping[str, np.ndarray], sublayer_names: Sequence[str] | None = None, threshold: float = 0.9) -> None:
    """Panels A-C of Fig. 4 into three axes, from ``read_group('pca.zarr')``."""
    draw_pca_trajectories(axes[0], pca["projection"], pca["explained_variance_ratio"])
    draw_cumulative_variance(axes[1], pca["explained_variance_ratio"], threshold)
    draw_ev_per_sublayer(axes[2], pca["ev_per_sublayer_curve"], sublayer_names)
