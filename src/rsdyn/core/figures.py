"""Figure helpers shared by the stages' figures: atomic saving, sublayer colours and
colour bars, bundles of trajectories, profiles clipped at a floor, panel letters, legends
kept off the data, and the footer that marks a figure's judged claims with their verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Polygon, Rectangle

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


def mark_below_floor(ax: Axes, x: np.ndarray, values: np.ndarray, floor: float, colour: str = "tab:red", label: str | None = None) -> None:
    """Open triangles at ``floor`` where ``values`` lie below it (a curve drawn clipped)."""
    low = np.asarray(values, dtype=np.float64) < floor
    if low.any():
        ax.scatter(np.asarray(x)[low], np.full(int(low.sum()), floor), marker="v", facecolor="none", edgecolor=colour, s=30,
                   zorder=3, label=label or f"< {floor:g}")


def draw_clipped_profile(ax: Axes, values: np.ndarray, floor: float = -1.0, label: str | None = None) -> None:
    """A per-sublayer profile in black with depth-coloured points; values below ``floor``
    (R^2 of sublayers of almost no variance) are drawn at ``floor`` as open triangles."""
    x = np.arange(len(values))
    shown = np.maximum(values, floor)
    low = values < floor
    ax.plot(x, shown, color="black", lw=1.3, label=label)
    colours = sublayer_colours(len(values))
    ax.scatter(x[~low], shown[~low], c=colours[~low], s=14, zorder=3)
    mark_below_floor(ax, x, values, floor)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(min(0.0, float(np.nanmin(shown))) - 0.05, 1.05)


def panel_letter(ax: Axes, letter: str, fontsize: float = 16) -> None:
    """The panel letter as the axes' left title: above the axes' top-left corner, never on
    its data, its legend or a neighbour's colour bar."""
    ax.set_title(letter, loc="left", fontsize=fontsize, fontweight="bold")


def letter_titles(axes: Sequence[Axes], letters: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ") -> None:
    """Prefix each visible axes' title with the next panel letter and two spaces
    (``A  title``), in the given order."""
    for ax, letter in zip([ax for ax in axes if ax.get_visible()], letters):
        ax.set_title(f"{letter}  {ax.get_title()}", fontsize=ax.title.get_fontsize())


def legend_entries(axes: Sequence[Axes]) -> tuple[list, list[str]]:
    """``(handles, labels)`` of every labelled artist of ``axes``, each label once (for one
    legend shared by a row of panels)."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


#: where a legend may sit inside its axes, in order of preference after its own
LEGEND_LOCATIONS = ("upper right", "upper left", "lower left", "lower right", "center right", "center left",
                    "upper center", "lower center", "center")


def _renderer(figure: Figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def along_segments(xy: np.ndarray, step: float = 4.0) -> np.ndarray:
    """The points (P, 2) with points added along each segment every ``step`` (display
    pixels), so that a line crossing a box counts even between its vertices."""
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) < 2:
        return xy
    pieces = []
    for start, stop in zip(xy[:-1], xy[1:]):
        count = int(np.linalg.norm(stop - start) // step) + 1
        pieces.append(start + np.linspace(0.0, 1.0, count, endpoint=False)[:, None] * (stop - start))
    return np.concatenate([*pieces, xy[-1:]])


def _points(ax: Axes) -> np.ndarray:
    """Display coordinates of the axes' lines (vertices and points along their segments)
    and scatter or quiver positions."""
    found = [along_segments(line.get_transform().transform(np.column_stack([np.atleast_1d(line.get_xdata(orig=False)),
                                                                            np.atleast_1d(line.get_ydata(orig=False))]).astype(float)))
             for line in ax.get_lines() if line.get_visible() and len(np.atleast_1d(line.get_xdata()))]
    for collection in ax.collections:
        if not collection.get_visible():
            continue
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if len(offsets) and not (len(offsets) == 1 and not offsets.any()):  # scatter and quiver positions
            found.append(collection.get_offset_transform().transform(offsets))
        elif isinstance(collection, PolyCollection):  # filled bands (fill_between): their outlines
            found += [along_segments(collection.get_transform().transform(path.vertices)) for path in collection.get_paths()]
    found += [along_segments(patch.get_transform().transform(patch.get_xy())) for patch in ax.patches
              if isinstance(patch, Polygon) and patch.get_visible()]  # step histograms
    xy = np.concatenate(found) if found else np.zeros((0, 2))
    return xy[np.isfinite(xy).all(axis=1)]


def _covers(legend: Legend, ax: Axes, renderer) -> bool:
    box = legend.get_window_extent(renderer)
    xy = _points(ax)
    if ((xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)).any():
        return True
    return any(patch.get_window_extent(renderer).overlaps(box) for patch in ax.patches
               if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_width() and patch.get_height())


def keep_legends_off_data(figure: Figure, rounds: int = 3) -> Figure:
    """Move every legend that lies inside its axes and covers data (a line's vertex, a
    scatter or quiver position, a bar) to the first free place inside the axes
    (:data:`LEGEND_LOCATIONS`), or, when none is free, beside the axes on the right. The
    figure is drawn to measure, ``rounds`` times at most (a legend moved outside changes
    the layout). Returns ``figure``."""
    for _ in range(rounds):
        renderer = _renderer(figure)
        moved = False
        for ax in figure.get_axes():
            axes_box = ax.get_window_extent(renderer)
            for legend in [child for child in ax.get_children() if isinstance(child, Legend) and child.get_visible()]:
                box = legend.get_window_extent(renderer)
                if not (axes_box.contains(box.x0, box.y0) and axes_box.contains(box.x1, box.y1)) or not _covers(legend, ax, renderer):
                    continue  # placed outside the axes on purpose, or clear of the data
                for location in LEGEND_LOCATIONS:
                    legend.set_loc(location)
                    if not _covers(legend, ax, renderer):
                        break
                else:
                    legend.set_loc("upper left")
                    legend.set_bbox_to_anchor((1.02, 1.0), transform=ax.transAxes)
                moved = True
        if not moved:
            break
    return figure


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
    def number(value, spec: str) -> str:  # a value summary.json holds as null (not finite) reads "n/a"
        return "n/a" if value is None else format(value, spec)

    lines = []
    for claim in claims:
        low, high = claim.get("interval") or (None, None)
        interval = f" [{number(low, '.3g')}, {number(high, '.3g')}]" if low is not None or high is not None else ""
        lines.append((f"Fig. {claim.get('figure', '')}  {claim['id']}: {number(claim.get('value'), '.3g')}{interval}, "
                      f"Holm p {number(claim.get('p_holm'), '.2g')}  ", claim["verdict"]))
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
