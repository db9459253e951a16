"""Layout checks of a drawn matplotlib figure: its panel letters, and legends that cover
plotted data (used by tests/test_figures.py; independent of rsdyn's own placement code).

Panel letters are written either as a text of their own (``B``, ``C'``, ``C′``, ``H''``;
an axes' left title or a text beside it) or at the start of an axes title followed by
two spaces (``A  trajectories in PC space``). Data points are the vertices of every
line and of every step histogram's outline, and points every 3 pixels along their
segments (a line crossing a legend between two vertices counts), the offsets of every scatter and quiver (their positions), and the
rectangles of bars, each in display coordinates after the figure is drawn; a legend
covers data when one of its axes' points, or part of a bar, lies inside its window extent.
"""

from __future__ import annotations

import re

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Polygon, Rectangle
from matplotlib.text import Text

LETTER = re.compile(r"^[A-Z][′″']*$")
TITLE_LETTER = re.compile(r"^([A-Z][′″']*) {2}\S")


def drawn(figure: Figure):
    """Draw ``figure`` (layout included) and return its renderer."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def panel_letters(figure: Figure) -> list[str]:
    """Every visible panel letter of the figure, in drawing order."""
    letters = []
    for text in figure.findobj(Text):
        content = text.get_text().strip()
        if not text.get_visible() or not content:
            continue
        if LETTER.match(content) and _is_label(text):
            letters.append(content)
        elif (match := TITLE_LETTER.match(content)) and (_is_title(text) or text.axes is None):
            letters.append(match.group(1))  # an axes' title, or a (sub)figure's title
    return letters


def letter_texts(figure: Figure) -> list[Text]:
    """The standalone panel-letter texts (not those at the start of a title)."""
    return [text for text in figure.findobj(Text)
            if text.get_visible() and LETTER.match(text.get_text().strip()) and _is_label(text)]


def letter_overlaps(figure: Figure) -> list[str]:
    """One line per standalone panel letter that lies on data or on a legend of any axes, or
    touches an axes title."""
    renderer = drawn(figure)
    problems = []
    titles = [title for axes in figure.get_axes() for title in (axes.title, getattr(axes, "_right_title", None))
              if title is not None and title.get_visible() and title.get_text()]
    for text in letter_texts(figure):
        box = text.get_window_extent(renderer)
        gap = 0.3 * box.height  # a letter needs some space before a title to read as a letter
        padded = box.expanded((box.width + 2 * gap) / max(box.width, 1e-9), 1.0)
        for title in titles:
            if title is not text and title.get_window_extent(renderer).overlaps(padded):
                problems.append(f"panel letter {text.get_text()!r} touches the title {title.get_text().splitlines()[0]!r}")
        for axes in figure.get_axes():
            points = data_points(axes)
            inside = int(((points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & (points[:, 1] < box.y1)).sum())
            legends = [child for child in axes.get_children() if isinstance(child, Legend) and child.get_visible()]
            on_legend = any(legend.get_window_extent(renderer).overlaps(box) for legend in legends)
            if inside or on_legend:
                problems.append(f"panel letter {text.get_text()!r} lies on {inside} data points" + (" and on a legend" if on_legend else ""))
    return problems


def _is_title(text: Text) -> bool:
    axes = text.axes
    return axes is not None and any(text is getattr(axes, name, None) for name in ("title", "_left_title", "_right_title"))


def _is_label(text: Text) -> bool:
    """A standalone letter: not a tick label or a legend entry."""
    axes = text.axes
    if axes is not None:
        ticks = [label for axis in (axes.xaxis, axes.yaxis) for label in axis.get_ticklabels(which="both")]
        if text in ticks:
            return False
        legends = [child for child in axes.get_children() if isinstance(child, Legend)]
        if any(text in legend.get_texts() for legend in legends):
            return False
    return True


def densified(xy: np.ndarray, spacing: float = 3.0) -> np.ndarray:
    """A polyline's display points with points every ``spacing`` pixels along each segment."""
    xy = xy[np.isfinite(xy).all(axis=1)]
    out = [xy]
    for a, b in zip(xy[:-1], xy[1:]):
        n = int(np.hypot(*(b - a)) / spacing)
        if n > 1:
            t = np.arange(1, n) / n
            out.append(a + t[:, None] * (b - a))
    return np.concatenate(out) if len(xy) else xy


def data_points(axes: Axes) -> np.ndarray:
    """Display coordinates (P, 2) of the axes' line vertices and scatter/quiver offsets
    that lie inside the axes."""
    points = []
    for line in axes.get_lines():
        if not line.get_visible():
            continue
        xy = np.column_stack([np.atleast_1d(line.get_xdata(orig=False)), np.atleast_1d(line.get_ydata(orig=False))]).astype(float)
        if len(xy):
            points.append(densified(line.get_transform().transform(xy)))
    for patch in axes.patches:  # step histograms: outlines drawn as polygons
        if isinstance(patch, Polygon) and patch.get_visible():
            points.append(densified(patch.get_transform().transform(np.asarray(patch.get_xy(), dtype=float))))
    for collection in axes.collections:
        if not collection.get_visible():
            continue
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if offsets.size and not (len(offsets) == 1 and np.allclose(offsets, 0)):
            points.append(collection.get_offset_transform().transform(offsets))
    if not points:
        return np.zeros((0, 2))
    xy = np.concatenate(points)
    xy = xy[np.isfinite(xy).all(axis=1)]
    box = axes.get_window_extent()
    inside = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
    return xy[inside]


def bar_boxes(axes: Axes, renderer) -> list:
    """Window extents of the axes' bars and histogram bins (rectangles of data)."""
    return [patch.get_window_extent(renderer) for patch in axes.patches if isinstance(patch, Rectangle) and patch.get_visible()
            and patch.get_width() != 0 and patch.get_height() != 0]


def legend_overlaps(figure: Figure) -> list[str]:
    """One line per legend that covers data of its own axes: the axes' title, the number of
    points inside it and whether a bar is under it."""
    renderer = drawn(figure)
    problems = []
    for axes in figure.get_axes():
        legends = [child for child in axes.get_children() if isinstance(child, Legend) and child.get_visible()]
        if not legends:
            continue
        points = data_points(axes)
        bars = bar_boxes(axes, renderer)
        for legend in legends:
            box = legend.get_window_extent(renderer)
            inside = int(((points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & (points[:, 1] < box.y1)).sum())
            covered = sum(1 for bar in bars if bar.overlaps(box))
            if inside or covered:
                title = axes.get_title() or axes.get_title(loc="left") or "(untitled axes)"
                problems.append(f"{title.splitlines()[0]!r}: legend covers {inside} data points and {covered} bars")
    return problems
