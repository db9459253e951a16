"""Fig. 4: PCA of the residual stream (A-C, from :mod:`rsdyn.plots.pca_panels`) and
teleportation (D: one quiver panel per teleport layer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rsdyn.plots.pca_panels import draw_pca_panels  # noqa: E402

CONTROL_COLOUR = "0.55"


def arrow_vectors(trajectories: np.ndarray, arrow_sublayers: int) -> tuple[np.ndarray, np.ndarray]:
    """Quiver ``(starts (P, 2), displacements (P, 2))``: from each teleported point at
    sublayer 2l to its position ``arrow_sublayers`` sublayers later (or the last
    recorded sublayer, if sooner), in PC units."""
    if arrow_sublayers < 1:
        raise ValueError(f"teleport.arrow_sublayers = {arrow_sublayers}; it must be >= 1.")
    end = min(int(arrow_sublayers), trajectories.shape[1] - 1)
    return trajectories[:, 0], trajectories[:, end] - trajectories[:, 0]


def draw_teleport_panel(
    ax: Axes,
    group: Mapping[str, np.ndarray],
    layer: int,
    arrow_sublayers: int = 12,
    label: str = "",
    norm: LogNorm | None = None,
    cmap: str = "magma_r",
):
    """Fig. 4D for one layer: the control trajectory (grey, circle at sublayer 2l) and one
    arrow per grid point over the next ``arrow_sublayers`` sublayers, coloured by its MSE
    to the control. Returns the quiver (for a shared colour bar)."""
    control = np.asarray(group["control"], dtype=np.float64)
    trajectories = np.asarray(group["trajectories"], dtype=np.float64)
    mse = np.asarray(group["mse_to_control"], dtype=np.float64)
    starts, moves = arrow_vectors(trajectories, arrow_sublayers)
    ax.plot(control[:, 0], control[:, 1], color=CONTROL_COLOUR, lw=1.6, zorder=1, label="control")
    ax.scatter(*control[2 * layer], s=30, facecolor="none", edgecolor="black", lw=0.8, zorder=4, label=f"control at L{layer}")
    quiver = ax.quiver(
        starts[:, 0], starts[:, 1], moves[:, 0], moves[:, 1], np.maximum(mse, np.finfo(float).tiny),
        angles="xy", scale_units="xy", scale=1, width=0.006, cmap=cmap, norm=norm, zorder=3,
    )
    corners = np.concatenate([starts, starts + moves, control])
    low, high = corners.min(axis=0), corners.max(axis=0)
    pad = 0.05 * np.maximum(high - low, 1e-12)
    ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
    ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
    steps = min(int(arrow_sublayers), trajectories.shape[1] - 1)
    ax.set_title(f"{label}layer {layer}: mean MSE {mse.mean():.3g}", fontsize=9)
    ax.set_xlabel(f"PC1 (arrows: {steps} sublayer{'s' if steps != 1 else ''})", fontsize=8)
    ax.set_ylabel("PC2", fontsize=8)
    ax.tick_params(labelsize=7)
    return quiver


def fig4(
    pca: Mapping[str, np.ndarray],
    teleport: Mapping[int, Mapping[str, np.ndarray]],
    arrow_sublayers: int = 12,
    sublayer_names: Sequence[str] | None = None,
    threshold: float = 0.9,
) -> Figure:
    """The whole figure: A-C on the top row, one teleport panel per layer below."""
    layers = sorted(teleport)
    if not layers:
        raise ValueError("Fig. 4 needs at least one teleport layer.")
    columns = max(3, len(layers))
    figure = plt.figure(figsize=(3.6 * columns, 7.6), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1, 1])
    draw_pca_panels(top.subplots(1, 3), pca, sublayer_names, threshold)
    axes = np.atleast_1d(bottom.subplots(1, len(layers)))
    all_mse = np.concatenate([np.asarray(teleport[layer]["mse_to_control"], np.float64) for layer in layers])
    positive = all_mse[all_mse > 0]
    norm = LogNorm(positive.min(), positive.max()) if positive.size and positive.min() < positive.max() else None
    quiver = None
    for index, (ax, layer) in enumerate(zip(axes, layers)):
        quiver = draw_teleport_panel(ax, teleport[layer], layer, arrow_sublayers, "D  " if index == 0 else "", norm)
    axes[0].legend(fontsize=7, frameon=False, loc="best")
    bottom.colorbar(quiver, ax=list(axes), label="MSE to control (PC units$^2$)", fraction=0.02, pad=0.01)
    bottom.suptitle("Teleportation: grid points written into the residual stream of layer l", fontsize=10)
    return figure


def save_fig4(pca_path, teleport_path, pdf_path, png_path, arrow_sublayers: int = 12, dpi: int = 150) -> None:
    """Read ``pca.zarr`` and ``teleport.zarr``, draw Fig. 4 and write it atomically as PDF and PNG."""
    from rsdyn.store import atomic_file, open_group, read_group
    from rsdyn.teleport import read_teleport

    attrs = dict(open_group(pca_path).attrs)
    figure = fig4(
        read_group(pca_path),
        read_teleport(teleport_path),
        arrow_sublayers,
        attrs.get("sublayer_names"),
        attrs.get("variance_threshold", 0.9),
    )
    for path, kwargs in ((pdf_path, {}), (png_path, {"dpi": dpi})):
        with atomic_file(path) as temp:
            figure.savefig(temp, format=Path(path).suffix[1:], **kwargs)
    plt.close(figure)
