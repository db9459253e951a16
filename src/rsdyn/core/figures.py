"""Figure helpers shared by the stages' figures: atomic saving, sublayer colours and
colour bars, bundles of trajectories, and profiles clipped at a floor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rsdyn.core.store import atomic_path


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


def save_figure(figure: Figure, paths: Sequence[str | Path], dpi: int = 150) -> None:
    """Write ``figure`` to each path (format from the extension), atomically."""
    for path in paths:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=dpi, bbox_inches="tight")
