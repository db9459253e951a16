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

from rsdyn.plots.pca_panels import (  # noqa: E402
    _sublayer_axis,
    add_sublayer_colourbar,
    draw_clipped_profile,
    draw_trajectory_bundle,
)

WITHIN, CROSS = "tab:blue", "tab:orange"


def draw_architecture(ax: Axes, widths: Sequence[int], d_model: int) -> None:
    """Panel A: the width of every layer, input -> encoder -> bottleneck -> decoder (log scale)."""
    sizes = [d_model, *widths, *widths[-2::-1], d_model]
    x = np.arange(len(sizes))
    colours = ["0.6"] + ["tab:green"] * len(widths) + ["tab:purple"] * (len(widths) - 1) + ["0.6"]
    ax.bar(x, sizes, color=colours, width=0.8)
    for xi, size in zip(x, sizes):
        ax.text(xi, size * 1.15, str(size), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_ylim(1, d_model * 20)
    ax.set_xticks([0, len(widths), len(sizes) - 1], ["input", "bottleneck", "output"], fontsize=7)
    ax.set_ylabel("layer width")
    ax.set_title(f"A  CAE, k = {len(widths)} layers per side")


def draw_training_curve(ax: Axes, curve: Sequence[Mapping], best_epoch: int | None = None, note: str | None = None) -> None:
    """Panel E: training and validation MSE (squared input units) per epoch; ``note`` (e.g.
    the training options) titles the legend."""
    epochs = [row["epoch"] for row in curve]
    ax.plot(epochs, [row["train_loss"] for row in curve], lw=1.0, label="train")
    ax.plot(epochs, [row["val_loss"] for row in curve], lw=1.0, label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", ls=":", lw=0.8, label=f"best epoch {best_epoch}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_title("E  training curve")
    ax.legend(fontsize=7, frameon=False, title=note, title_fontsize=7)


def draw_mean_trajectory(ax: Axes, embedding: np.ndarray, max_trajectories: int = 100, seed: int = 0) -> None:
    """Panel B: the mean 2-D trajectory over test sequences, points coloured by sublayer;
    a seeded subset of individual trajectories in light grey."""
    draw_trajectory_bundle(ax, embedding, max_trajectories, seed, marker_size=25)
    ax.set_xlabel("CAE dimension 1")
    ax.set_ylabel("CAE dimension 2")
    ax.set_title("B  mean trajectory (test set)")
    add_sublayer_colourbar(ax, embedding.shape[1])


def draw_step_distance(ax: Axes, step_distance: np.ndarray, step_distance_sem: np.ndarray | None = None, sublayer_names: Sequence[str] | None = None) -> None:
    """Panel C: mean distance between successive sublayers in the 2-D space, per transition;
    within-layer (pre-attn -> pre-MLP) and cross-layer (pre-MLP -> next pre-attn) apart."""
    transitions = np.arange(len(step_distance))
    sem = np.zeros_like(step_distance) if step_distance_sem is None else step_distance_sem
    for parity, colour, label in ((0, WITHIN, "within layer"), (1, CROSS, "cross layer")):
        t = transitions[transitions % 2 == parity]
        ax.errorbar(t + 0.5, step_distance[t], yerr=sem[t], color=colour, marker="o", ms=3, lw=0.8, label=label)
    _sublayer_axis(ax, len(step_distance) + 1, sublayer_names)
    ax.set_ylabel("step distance in 2-D")
    ax.set_title("C  distance between successive sublayers")
    ax.legend(fontsize=7, frameon=False)


def draw_cae_explained_variance(
    ax: Axes,
    ev_per_sublayer: np.ndarray,
    sublayer_names: Sequence[str] | None = None,
    ev_pooled_reference: np.ndarray | None = None,
    variance_per_sublayer: np.ndarray | None = None,
) -> None:
    """Panel D: explained variance (R^2) of the reconstruction of each sublayer on the test
    set, against the sublayer's own mean (black) and, if given, against the pooled mean
    (grey). Sublayers of negligible variance (``rsdyn.cae.sublayers_with_variance`` on
    ``variance_per_sublayer``) get no own-mean R^2 and are marked by grey crosses at 0;
    other values below -1 are drawn at -1 as open triangles."""
    from rsdyn.cae import NEGLIGIBLE_RELATIVE_VARIANCE, sublayers_with_variance

    ev = np.asarray(ev_per_sublayer, dtype=np.float64).copy()
    negligible = np.zeros(len(ev), dtype=bool)
    if variance_per_sublayer is not None:
        negligible = ~sublayers_with_variance(variance_per_sublayer)
        ev[negligible] = np.nan
    if ev_pooled_reference is not None:
        ax.plot(np.arange(len(ev_pooled_reference)), np.maximum(ev_pooled_reference, -1.0), color="0.6", lw=1.0, label="vs pooled mean")
    draw_clipped_profile(ax, ev, floor=-1.0, label="vs sublayer mean")
    if negligible.any():
        ax.scatter(np.flatnonzero(negligible), np.zeros(negligible.sum()), marker="x", color="0.4", s=20, zorder=3,
                   label=f"variance < {NEGLIGIBLE_RELATIVE_VARIANCE:g} x mean (no R^2)")
    lowest = min(float(np.nanmin(line.get_ydata())) for line in ax.lines)
    ax.set_ylim(min(0.0, lowest) - 0.05, 1.05)
    _sublayer_axis(ax, len(ev), sublayer_names)
    ax.set_ylabel("explained variance (test)")
    ax.set_title("D  reconstruction per sublayer")
    ax.legend(fontsize=7, frameon=False, loc="lower right")


def load_cae_outputs(cae_dir) -> dict:
    """The arrays of ``embedding.zarr``, its attributes, ``training.json`` and the training curve."""
    from rsdyn.store import open_group, read_group

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
    figure, axes = plt.subplot_mosaic([["A", "B", "B", "E"], ["C", "C", "D", "D"]], figsize=(14, 8), layout="constrained")
    draw_architecture(axes["A"], info["widths"], info["d_model"])
    draw_mean_trajectory(axes["B"], arrays["embedding"])
    draw_step_distance(axes["C"], arrays["step_distance"], arrays["step_distance_sem"], names)
    draw_cae_explained_variance(
        axes["D"], arrays["ev_per_sublayer"], names, arrays.get("ev_per_sublayer_pooled_reference"), arrays.get("test_variance_per_sublayer")
    )
    settings = info.get("settings", {})
    clip = settings.get("grad_clip")
    note = (
        f"{info.get('input_scaling', settings.get('input_scaling', 'global'))} input scaling\n"
        f"clip {'none' if clip is None else f'{clip:g}'}, warm-up {settings.get('warmup_epochs', 0):g} epochs"
    )
    draw_training_curve(axes["E"], outputs["curve"], info["best_epoch"], note)
    figure.suptitle(
        f"Compressing autoencoder, {info.get('model_name') or ''} ({info['condition']}): "
        f"{info['n_sequences']['test']} test sequences, best epoch {info['best_epoch']}"
        + (f", test MSE {info['test_loss']:.3g}, pooled test R^2 {info['test_r2_pooled']:.2f}" if "test_r2_pooled" in info else ""),
        fontsize=10,
    )
    return figure


def save_fig3(cae_dir, pdf_path, png_path, dpi: int = 150) -> None:
    """Draw Fig. 3 and write it, atomically, as PDF and PNG."""
    from rsdyn.store import atomic_file

    figure = fig3(cae_dir)
    for path, kwargs in ((pdf_path, {}), (png_path, {"dpi": dpi})):
        with atomic_file(path) as temp:
            figure.savefig(temp, format=Path(path).suffix[1:], **kwargs)
    plt.close(figure)
