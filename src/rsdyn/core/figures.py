"""Figure helpers shared by the stages' figures: atomic saving, sublayer colours and
colour bars, bundles of trajectories, profiles clipped at a floor, and the footer that
marks a figure's judged claims with their verdicts."""

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


#: the colour of each verdict in a figure's footer
VERDICT_COLOURS = {"reproduced": "tab:green", "supported": "tab:green", "opposite": "tab:red", "contradicted": "tab:red",
                   "equivalent": "tab:blue", "inconclusive": "0.35"}


def claims_of_figure(summary_path: str | Path | None, figure: int) -> list[dict]:
    """The judged claims of ``summary.json`` whose figure panel is in Fig. ``figure``."""
    import json

    if not summary_path:
        return []
    claims = json.loads(Path(summary_path).read_text()).get("claims", [])
    return [claim for claim in claims if claim.get("verdict") and str(claim.get("figure", "")).split("/")[0].rstrip("ABCDEFGH") == str(figure)]


def mark_claims(figure: Figure, claims: Sequence[dict]) -> None:
    """A footer under the panels: one line per judged claim, its panel, id, value with its
    interval, Holm-adjusted p and verdict (coloured), so the figure says what was judged."""
    if not claims:
        return
    lines = []
    for claim in claims:
        low, high = claim.get("interval") or (None, None)
        interval = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
        lines.append((f"Fig. {claim.get('figure', '')}  {claim['id']}: {claim.get('value', float('nan')):.3g}{interval}, "
                      f"Holm p {claim.get('p_holm', float('nan')):.2g}  ", claim["verdict"]))
    height = figure.get_figheight()
    step = 0.17 / height  # about 12 pt per line, in figure coordinates
    figure.text(0.01, -step * 0.5, "Judged claims (config/claims.yaml; the claims table in summary.json):", fontsize=9,
                ha="left", va="top", fontweight="bold")
    for index, (text, verdict) in enumerate(lines):
        y = -step * (index + 1.6)
        label = figure.text(0.02, y, text, fontsize=8.5, ha="left", va="top")
        figure.canvas.draw()
        right = label.get_window_extent().x1 / (figure.get_figwidth() * figure.dpi)
        figure.text(right, y, verdict, fontsize=8.5, ha="left", va="top", fontweight="bold", color=VERDICT_COLOURS.get(verdict, "black"))
