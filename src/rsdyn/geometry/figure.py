"""Fig. 4: PCA of the residual stream (A-C, from :mod:`rsdyn.geometry.pca_figure`, with both
views of C), teleportation (D: one quiver panel per teleport layer) and the recovery
metrics per layer (E: distance ratio, alignment, spread ratio; grid and sample control).

D panels share one scale: PC units when every layer has the same grid range, else each
panel in standard deviations of its own layer's projected states (``teleport.range:
per_layer``), centred on the grid. Arrows have one length (a fraction of the grid
spacing) and show the direction of each point's displacement over the horizon; their
colour is its magnitude, on one logarithmic colour scale for all panels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from rsdyn.core.figures import claims_of_figure, keep_legends_off_data, mark_claims, save_figure  # noqa: E402
from rsdyn.geometry.pca_figure import draw_pca_panels  # noqa: E402

CONTROL_COLOUR = "0.55"
SET_STYLE = {"": ("grid", "tab:purple"), "sample_": ("sample control", "tab:green")}
#: arrow length as a fraction of the grid spacing
ARROW_FRACTION = 0.7
FONT_SIZE = 12


def arrow_vectors(trajectories: np.ndarray, arrow_sublayers: int) -> tuple[np.ndarray, np.ndarray]:
    """Quiver ``(starts (P, 2), displacements (P, 2))``: from each teleported point at
    sublayer 2l to its position ``arrow_sublayers`` sublayers later (or the last
    recorded sublayer, if sooner), in PC units."""
    if arrow_sublayers < 1:
        raise ValueError(f"teleport.arrow_sublayers = {arrow_sublayers}; it must be >= 1.")
    end = min(int(arrow_sublayers), trajectories.shape[1] - 1)
    return trajectories[:, 0], trajectories[:, end] - trajectories[:, 0]


def _grid_range(group: Mapping[str, np.ndarray]) -> np.ndarray:
    """The layer's grid [min, max] per PC (2, 2), stored or read off the grid points."""
    if "grid_range" in group:
        return np.asarray(group["grid_range"], dtype=np.float64)
    points = np.asarray(group["grid_points"], dtype=np.float64)
    return np.stack([points.min(axis=0), points.max(axis=0)], axis=1)


def panel_frames(teleport: Mapping[int, Mapping[str, np.ndarray]], range_sd: float | None = None) -> tuple[dict, str]:
    """``({layer: (centre (2,), scale (2,))}, unit label)``: panel coordinates are
    (PC - centre) / scale. One frame for all layers (PC units) when the grids share a
    range; else each layer centred on its grid, in units of grid half-width / ``range_sd``
    (its states' standard deviation under ``teleport.range: per_layer``)."""
    ranges = {layer: _grid_range(group) for layer, group in teleport.items()}
    first = next(iter(ranges.values()))
    if all(np.allclose(r, first, rtol=1e-6, atol=0) for r in ranges.values()):
        return {layer: (np.zeros(2), np.ones(2)) for layer in ranges}, "PC units"
    divisor = float(range_sd) if range_sd else 1.0
    frames = {layer: (r.mean(axis=1), (r[:, 1] - r[:, 0]) / 2 / divisor) for layer, r in ranges.items()}
    return frames, "SD of the layer's states" if range_sd else "grid half-widths"


def _steps(group: Mapping[str, np.ndarray], arrow_sublayers: int) -> int:
    if "horizon" in group:
        return int(group["horizon"])
    return min(int(arrow_sublayers), np.shape(group["trajectories"])[1] - 1)


def _unit_arrows(displacement: np.ndarray, length: float) -> np.ndarray:
    norms = np.linalg.norm(displacement, axis=-1, keepdims=True)
    return np.where(norms > 0, displacement / np.where(norms > 0, norms, 1.0), 0.0) * length


def draw_teleport_panel(
    ax: Axes,
    group: Mapping[str, np.ndarray],
    layer: int,
    arrow_sublayers: int = 12,
    frame: tuple[np.ndarray, np.ndarray] = (np.zeros(2), np.ones(2)),
    norm: Normalize | None = None,
    cmap: str = "viridis",
    label: str = "",
):
    """Fig. 4D for one layer, in panel coordinates (PC - centre) / scale of ``frame``: the
    control trajectory (grey; circle at sublayer 2l, black arrow its own direction over
    the horizon) and one equal-length arrow per grid point in the direction of its
    displacement over the horizon, coloured by the displacement's length (panel units).
    Returns the quiver (for a shared colour bar)."""
    centre, scale = (np.asarray(v, dtype=np.float64) for v in frame)
    control = (np.asarray(group["control"], dtype=np.float64) - centre) / scale
    trajectories = (np.asarray(group["trajectories"], dtype=np.float64) - centre) / scale
    steps = _steps(group, arrow_sublayers)
    starts, moves = arrow_vectors(trajectories, steps)
    grid = (_grid_range(group) - centre[:, None]) / scale[:, None]
    n_side = max(2, int(round(np.sqrt(len(starts)))))
    length = ARROW_FRACTION * float(np.min(grid[:, 1] - grid[:, 0])) / (n_side - 1)
    magnitude = np.maximum(np.linalg.norm(moves, axis=-1), np.finfo(float).tiny)
    arrows = _unit_arrows(moves, length)
    ax.plot(control[:, 0], control[:, 1], color=CONTROL_COLOUR, lw=1.8, zorder=1, label="control trajectory")
    here = control[2 * layer]
    own = _unit_arrows(control[2 * layer + steps] - here, 1.4 * length)
    ax.annotate("", here + own, here, arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.6}, zorder=5)
    ax.scatter(*here, s=50, facecolor="white", edgecolor="black", lw=1.2, zorder=6, label=f"control at layer {layer}")
    quiver = ax.quiver(
        starts[:, 0], starts[:, 1], arrows[:, 0], arrows[:, 1], magnitude,
        angles="xy", scale_units="xy", scale=1, width=0.008, headwidth=3.5, cmap=cmap, norm=norm, zorder=3,
    )
    ratio = np.nanmedian(group["distance_ratio"]) if "distance_ratio" in group else np.nan
    alignment = np.nanmedian(group["alignment"]) if "alignment" in group else np.nan
    ax.set_title(f"{label}layer {layer} (h = {steps})\nratio {ratio:.2f}, alignment {alignment:.2f}")
    return quiver


def _box(ax: Axes, values: Sequence[np.ndarray], positions: np.ndarray, colour: str, log: bool) -> None:
    data = []
    for array in values:
        array = np.asarray(array, dtype=np.float64)
        array = array[np.isfinite(array) & ((array > 0) if log else True)]
        data.append(array if array.size else np.array([np.nan]))
    ax.boxplot(
        data, positions=positions, widths=0.32, showfliers=False, patch_artist=True, manage_ticks=False,
        boxprops={"facecolor": colour, "alpha": 0.45, "edgecolor": colour}, medianprops={"color": "black", "lw": 1.5},
        whiskerprops={"color": colour}, capprops={"color": colour},
    )


def draw_recovery_panels(axes: Sequence[Axes], teleport: Mapping[int, Mapping[str, np.ndarray]]) -> None:
    """Fig. 4E: per teleport layer, the distance ratio and the alignment of every point (box:
    quartiles, whiskers 1.5 IQR) and the spread ratio, for the grid and the sample control."""
    layers = sorted(teleport)
    x = np.arange(len(layers))
    sets = [prefix for prefix in SET_STYLE if all(f"{prefix}distance_ratio" in teleport[layer] for layer in layers)]
    offsets = np.linspace(-0.18, 0.18, len(sets)) if len(sets) > 1 else np.zeros(1)
    for offset, prefix in zip(offsets, sets):
        name, colour = SET_STYLE[prefix]
        _box(axes[0], [teleport[layer][f"{prefix}distance_ratio"] for layer in layers], x + offset, colour, log=True)
        _box(axes[1], [teleport[layer][f"{prefix}alignment"] for layer in layers], x + offset, colour, log=False)
        spread = [float(np.asarray(teleport[layer][f"{prefix}spread_ratio"])) for layer in layers]
        axes[2].plot(x + offset, spread, "o", color=colour, ms=7, label=name)
    for ax, title, reference in zip(
        axes,
        ("E  distance ratio $d_{2l+h}/d_{2l}$", "alignment with the way back", "spread ratio (variance $2l+h$ / $2l$)"),
        (1.0, 0.0, 1.0),
    ):
        ax.axhline(reference, color="grey", lw=0.8, ls=":")
        ax.set_xticks(x, [str(layer) for layer in layers])
        ax.set_xlabel("teleport layer")
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[1].set_ylim(-1.05, 1.05)
    axes[0].set_ylabel("below 1: nearer the control")
    axes[1].set_ylabel("1: straight back")
    axes[2].set_ylabel("below 1: converging")
    handles = [Patch(facecolor=SET_STYLE[prefix][1], alpha=0.45, edgecolor=SET_STYLE[prefix][1], label=SET_STYLE[prefix][0]) for prefix in sets]
    axes[0].legend(handles=handles, frameon=False, loc="upper right")
    axes[2].legend(frameon=False)


def fig4(
    pca: Mapping[str, np.ndarray],
    teleport: Mapping[int, Mapping[str, np.ndarray]],
    arrow_sublayers: int = 12,
    sublayer_names: Sequence[str] | None = None,
    threshold: float = 0.9,
    range_sd: float | None = None,
) -> Figure:
    """The whole figure: A-C on the top row (two C panels: pooled and within view), one
    teleport panel per layer below on one shared scale, and the recovery metrics."""
    layers = sorted(teleport)
    if not layers:
        raise ValueError("Fig. 4 needs at least one teleport layer.")
    with plt.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE, "legend.fontsize": FONT_SIZE - 3, "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1}):
        figure = plt.figure(figsize=(13.5, 12.5), layout="constrained")
        top, middle, bottom = figure.subfigures(3, 1, height_ratios=[1.0, 1.05, 0.85])
        draw_pca_panels(top.subplots(1, 4), pca, sublayer_names, threshold)
        axes = np.atleast_1d(middle.subplots(1, len(layers), sharex=True, sharey=True))
        frames, unit = panel_frames(teleport, range_sd)
        magnitudes = np.concatenate([
            np.linalg.norm(arrow_vectors((np.asarray(teleport[layer]["trajectories"], np.float64) - frames[layer][0]) / frames[layer][1],
                                         _steps(teleport[layer], arrow_sublayers))[1], axis=-1)
            for layer in layers
        ])
        positive = magnitudes[magnitudes > 0]
        norm = LogNorm(positive.min(), positive.max()) if positive.size and positive.min() < positive.max() else None
        quiver = None
        for index, (ax, layer) in enumerate(zip(axes, layers)):
            quiver = draw_teleport_panel(ax, teleport[layer], layer, arrow_sublayers, frames[layer], norm, label="")
        grids = np.array([(_grid_range(teleport[layer]) - frames[layer][0][:, None]) / frames[layer][1][:, None] for layer in layers])
        pad = 0.08 * (grids[:, :, 1] - grids[:, :, 0]).max(axis=0)
        axes[0].set_xlim(grids[:, 0, 0].min() - pad[0], grids[:, 0, 1].max() + pad[0])
        axes[0].set_ylim(grids[:, 1, 0].min() - pad[1], grids[:, 1, 1].max() + pad[1])
        axes[0].set_ylabel(f"PC2 ({unit})")
        middle.supxlabel(f"PC1 ({unit})", fontsize=FONT_SIZE)
        middle.colorbar(quiver, ax=list(axes), label=f"displacement over h ({unit})", fraction=0.02, pad=0.01)
        # the control's legend beside the row, never over the arrows
        middle.legend(*axes[0].get_legend_handles_labels(), loc="outside lower left", ncols=2, frameon=False)
        middle.suptitle("D  teleportation: grid points written into the residual stream at the input of layer l; arrows: direction over h sublayers")
        draw_recovery_panels(bottom.subplots(1, 3), teleport)
    return keep_legends_off_data(figure)


def save_fig4(pca_path, teleport_path, pdf_path, png_path, arrow_sublayers: int = 12, dpi: int = 150, summary_path=None) -> None:
    """Read ``pca.zarr`` and ``teleport.zarr``, draw Fig. 4 and write it atomically as PDF and PNG."""
    from rsdyn.core.store import open_group, read_group
    from rsdyn.geometry.run import read_teleport

    attrs = dict(open_group(pca_path).attrs)
    teleport_attrs = dict(open_group(teleport_path).attrs)
    figure = fig4(
        read_group(pca_path),
        read_teleport(teleport_path),
        arrow_sublayers,
        attrs.get("sublayer_names"),
        attrs.get("variance_threshold", 0.9),
        teleport_attrs.get("range_sd") if teleport_attrs.get("range") == "per_layer" else None,
    )
    mark_claims(figure, claims_of_figure(summary_path, 4))
    save_figure(figure, (pdf_path, png_path), dpi)  # bbox tight: the claims footer lies below the panels
    plt.close(figure)
