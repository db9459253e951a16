"""Fig. 3: the compressing autoencoder (architecture, 2-D trajectory, step distances, R^2,
training curve)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rsdyn.core.figures import (  # noqa: E402
    add_sublayer_colourbar,
    claims_of_figure,
    draw_clipped_profile,
    draw_trajectory_bundle,
    keep_legends_off_data,
    mark_below_floor,
    mark_claims,
)

WITHIN, CROSS = "tab:blue", "tab:orange"


def layer_axis(ax: Axes, n_positions: int, offset: float = 0.0, max_ticks: int = 8) -> None:
    """x ticks at the pre-attn sublayer 2l of evenly spaced layers l, labelled with l (plain,
    horizontal: readable at the size the README shows the figure)."""
    n_layers = max(1, n_positions // 2)
    step = max(1, -(-n_layers // max_ticks))
    layers = np.arange(0, n_layers, step)
    ax.set_xticks(2 * layers + offset, [str(layer) for layer in layers])
    ax.set_xlabel("layer (ticks at its pre-attn sublayer)")


def draw_architecture(ax: Axes, widths: Sequence[int], d_model: int) -> None:
    """Panel A: the width of every layer, input -> encoder -> bottleneck -> decoder (log scale)."""
    sizes = [d_model, *widths, *widths[-2::-1], d_model]
    x = np.arange(len(sizes))
    colours = ["0.6"] + ["tab:green"] * len(widths) + ["tab:purple"] * (len(widths) - 1) + ["0.6"]
    ax.bar(x, sizes, color=colours, width=0.8)
    for xi, size in zip(x, sizes):
        ax.text(xi, size * 1.15, str(size), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_yscale("log")
    ax.set_ylim(1, d_model * 30)
    ax.set_xticks([0, len(widths), len(sizes) - 1], ["input", "2-D", "output"])
    ax.set_ylabel("layer width")
    ax.set_title(f"A  CAE, k = {len(widths)} layers per side")


def draw_training_curve(ax: Axes, curve: Sequence[Mapping], best_epoch: int | None = None, note: str | None = None) -> None:
    """Panel E: training and validation MSE (squared input units) per epoch, log scale with
    plain tick labels; ``note`` (e.g. the training options) goes under the title."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    epochs = [row["epoch"] for row in curve]
    ax.plot(epochs, [row["train_loss"] for row in curve], lw=1.2, label="train")
    ax.plot(epochs, [row["val_loss"] for row in curve], lw=1.2, label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", ls=":", lw=1.0, label=f"best epoch {best_epoch}")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (activation units squared)")
    ax.set_title("E  training curve" + (f"\n{note}" if note else ""), fontsize=11 if not note else 10)
    ax.legend(fontsize=9, frameon=False, loc="upper right")


def draw_mean_trajectory(ax: Axes, embedding: np.ndarray, max_trajectories: int = 100, seed: int = 0) -> None:
    """Panel B: the mean 2-D trajectory over test sequences, points coloured by sublayer;
    a seeded subset of individual trajectories in light grey."""
    draw_trajectory_bundle(ax, embedding, max_trajectories, seed, marker_size=30)
    ax.set_xlabel("CAE dimension 1")
    ax.set_ylabel("CAE dimension 2")
    ax.set_title(f"B  mean trajectory of {len(embedding)} test sequences")
    add_sublayer_colourbar(ax, embedding.shape[1])


def draw_step_distance(ax: Axes, step_distance: np.ndarray, step_distance_sem: np.ndarray | None = None, sublayer_names: Sequence[str] | None = None) -> None:  # noqa: ARG001 - names kept for callers
    """Panel C: mean distance between successive sublayers in the 2-D space, per transition
    (drawn between the two sublayers), within-layer (pre-attn -> pre-MLP) and cross-layer
    (pre-MLP -> next pre-attn) apart; bars are +- 1 s.e.m. over test sequences."""
    transitions = np.arange(len(step_distance))
    sem = np.zeros_like(step_distance) if step_distance_sem is None else step_distance_sem
    for parity, colour, label in ((0, WITHIN, "within layer (pre-attn -> pre-MLP)"), (1, CROSS, "cross layer (pre-MLP -> next pre-attn)")):
        t = transitions[transitions % 2 == parity]
        ax.errorbar(t + 0.5, step_distance[t], yerr=sem[t], color=colour, marker="o", ms=3.5, lw=1.0, label=label)
    layer_axis(ax, len(step_distance) + 1)
    ax.set_ylabel("step distance in 2-D")
    ax.set_title("C  distance between successive sublayers")
    ax.legend(fontsize=9, frameon=False, loc="upper left")


def draw_cae_explained_variance(
    ax: Axes,
    ev_block_per_sublayer: np.ndarray,
    sublayer_names: Sequence[str] | None = None,  # noqa: ARG001 - names kept for callers
    ev_own_mean: np.ndarray | None = None,
    ev_pooled_reference: np.ndarray | None = None,
    variance_per_sublayer: np.ndarray | None = None,
) -> None:
    """Panel D: explained variance of the reconstruction of each sublayer on the test set.

    Black (depth-coloured points): the block-variance reading of the paper,
    1 - var(X_s - Y_s) / var(X_s) over every entry of the sublayer's test block; values
    below -1 are drawn at -1 as open triangles. Grey references: the R^2 against the
    pooled mean of all test states (solid) and against each unit's own mean in the
    sublayer (dashed), clipped at -1 like the black curve (grey open triangles) and left
    out for sublayers of negligible variance (``rsdyn.cae.sublayers_with_variance``),
    which grey crosses mark on the x axis (below every value: not an R^2 of 0)."""
    from rsdyn.cae.metrics import NEGLIGIBLE_RELATIVE_VARIANCE, sublayers_with_variance

    n_sublayers = len(ev_block_per_sublayer)
    x = np.arange(n_sublayers)
    references, marked_on_axis = [], False
    if ev_pooled_reference is not None:
        ax.plot(x, np.maximum(ev_pooled_reference, -1.0), color="0.55", lw=1.1, label="reference: vs pooled mean")
        references.append(np.asarray(ev_pooled_reference, dtype=np.float64))
    if ev_own_mean is not None:
        own = np.asarray(ev_own_mean, dtype=np.float64).copy()
        negligible = np.zeros(n_sublayers, dtype=bool)
        if variance_per_sublayer is not None:
            negligible = ~sublayers_with_variance(variance_per_sublayer)
            own[negligible] = np.nan
        ax.plot(x, np.maximum(own, -1.0), color="0.55", lw=1.1, ls="--", label="reference: vs each unit's sublayer mean")
        references.append(own)
        marked_on_axis = bool(negligible.any())
        if marked_on_axis:  # on the x axis, outside the data: no R^2 here, not an R^2 of 0
            ax.scatter(np.flatnonzero(negligible), np.zeros(negligible.sum()), marker="x", color="0.4", s=24, zorder=4,
                       transform=ax.get_xaxis_transform(), clip_on=False,
                       label=f"variance < {NEGLIGIBLE_RELATIVE_VARIANCE:g} x mean: no R^2 (marked on the axis)")
    if references:
        mark_below_floor(ax, x, np.fmin.reduce([np.where(np.isnan(r), np.inf, r) for r in references]), -1.0, colour="0.45",
                         label="reference < -1")
    draw_clipped_profile(ax, np.asarray(ev_block_per_sublayer, dtype=np.float64), floor=-1.0, label="1 - var(X - Y) / var(X), block of sublayer")
    lowest = min(float(np.nanmin(line.get_ydata())) for line in ax.lines if np.isfinite(line.get_ydata()).any())
    ax.set_ylim(min(0.0, lowest) - (0.15 if marked_on_axis else 0.05), 1.05)  # the axis' crosses apart from a floor at -1
    layer_axis(ax, n_sublayers)
    ax.set_ylabel("explained variance (test)")
    ax.set_title("D  reconstruction per sublayer")
    ax.legend(fontsize=8.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: never on a curve


def load_cae_outputs(cae_dir) -> dict:
    """The arrays of ``embedding.zarr``, its attributes, ``training.json`` and the training curve."""
    from rsdyn.core.store import open_group, read_group

    cae_dir = Path(cae_dir)
    arrays = read_group(cae_dir / "embedding.zarr")
    attrs = dict(open_group(cae_dir / "embedding.zarr").attrs)
    info = json.loads((cae_dir / "training.json").read_text())
    with open(cae_dir / "training_curve.csv") as handle:
        curve = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    return {"arrays": arrays, "attrs": attrs, "info": info, "curve": curve}


def fig3(cae_dir) -> Figure:
    """The whole Fig. 3 from the CAE output folder."""
    outputs = load_cae_outputs(cae_dir)
    arrays, info = outputs["arrays"], outputs["info"]
    names = outputs["attrs"].get("sublayer_names")
    figure = plt.figure(figsize=(15, 9.5), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1, 1])
    axes = dict(zip("ABE", top.subplots(1, 3, width_ratios=[1, 2.2, 1.4])))
    axes.update(zip("CD", bottom.subplots(1, 2)))
    draw_architecture(axes["A"], info["widths"], info["d_model"])
    draw_mean_trajectory(axes["B"], arrays["embedding"])
    draw_step_distance(axes["C"], arrays["step_distance"], arrays["step_distance_sem"], names)
    primary = arrays.get("ev_block_per_sublayer", arrays["ev_per_sublayer"])
    own = arrays["ev_per_sublayer"] if "ev_block_per_sublayer" in arrays else None
    draw_cae_explained_variance(axes["D"], primary, names, own, arrays.get("ev_per_sublayer_pooled_reference"), arrays.get("test_variance_per_sublayer"))
    settings = info.get("settings", {})
    clip = settings.get("grad_clip")
    note = (
        f"{info.get('input_scaling', settings.get('input_scaling', 'global'))} input scaling, "
        f"clip {'none' if clip is None else f'{clip:g}'}, warm-up {settings.get('warmup_epochs', 0):g}"
    )
    draw_training_curve(axes["E"], outputs["curve"], info["best_epoch"], note)
    figure.suptitle(
        f"Compressing autoencoder, {info.get('model_name') or ''} ({info['condition']}): "
        f"{info['n_sequences']['test']} test sequences, best epoch {info['best_epoch']}"
        + (f", test MSE {info['test_loss']:.3g}, pooled test R^2 {info['test_r2_pooled']:.2f}" if "test_r2_pooled" in info else ""),
        fontsize=12,
    )
    return keep_legends_off_data(figure)


def save_fig3(cae_dir, pdf_path, png_path, dpi: int = 150, summary_path=None) -> None:
    """Draw Fig. 3 and write it, atomically, as PDF and PNG."""
    from rsdyn.core.store import atomic_file

    figure = fig3(cae_dir)
    mark_claims(figure, claims_of_figure(summary_path, 3))
    for path, kwargs in ((pdf_path, {}), (png_path, {"dpi": dpi})):
        with atomic_file(path) as temp:
            figure.savefig(temp, format=Path(path).suffix[1:], **kwargs)
    plt.close(figure)
