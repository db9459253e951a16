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
    save_figure,
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


def seed_curves(curve: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs and the mean, minimum and maximum of ``key`` over the seeds that ran each
    epoch, from training-curve rows (one per seed and epoch; rows without a seed are one seed)."""
    by_epoch: dict[int, list[float]] = {}
    for record in curve:
        by_epoch.setdefault(int(record["epoch"]), []).append(float(record[key]))
    epochs = np.array(sorted(by_epoch))
    values = [np.array(by_epoch[e]) for e in epochs]
    return epochs, np.array([v.mean() for v in values]), np.array([v.min() for v in values]), np.array([v.max() for v in values])


def draw_training_curve(ax: Axes, curve: Sequence[Mapping], best_epoch=None, note: str | None = None) -> None:
    """Panel E: training and validation MSE (squared input units) per epoch, the mean over
    training seeds with their range as a band, log scale with plain tick labels; dotted
    lines at each seed's best epoch (``best_epoch``: one or a list); ``note`` (e.g. the
    training options) goes under the title."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        epochs, mean, low, high = seed_curves(curve, key)
        line = ax.plot(epochs, mean, lw=1.2, label=label)[0]
        if np.any(high > low):
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, lw=0)
    bests = sorted({int(b) for b in np.atleast_1d(best_epoch) if b}) if best_epoch is not None else []
    for index, best in enumerate(bests):
        ax.axvline(best, color="grey", ls=":", lw=1.0, label=None if index else f"best epoch{'s' * (len(bests) > 1)} {', '.join(map(str, bests))}")
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
    (pre-MLP -> next pre-attn) apart. One curve (T,): bars are +- 1 s.e.m. over test
    sequences; per seed (S, T): the mean over seeds, the band their range."""
    per_seed = np.atleast_2d(np.asarray(step_distance, dtype=np.float64))
    mean = per_seed.mean(axis=0)
    transitions = np.arange(len(mean))
    sem = np.zeros_like(mean) if step_distance_sem is None or len(per_seed) > 1 else np.asarray(step_distance_sem, dtype=np.float64).reshape(-1)
    for parity, colour, label in ((0, WITHIN, "within layer (pre-attn -> pre-MLP)"), (1, CROSS, "cross layer (pre-MLP -> next pre-attn)")):
        t = transitions[transitions % 2 == parity]
        ax.errorbar(t + 0.5, mean[t], yerr=sem[t], color=colour, marker="o", ms=3.5, lw=1.0, label=label)
        if len(per_seed) > 1:
            ax.fill_between(t + 0.5, per_seed[:, t].min(axis=0), per_seed[:, t].max(axis=0), color=colour, alpha=0.2, lw=0)
    layer_axis(ax, len(mean) + 1)
    ax.set_ylabel("step distance in 2-D" + (f" (mean of {len(per_seed)} seeds, band: range)" if len(per_seed) > 1 else ""))
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
    """Panel D: explained variance of the reconstruction of each sublayer on the test set;
    per-seed arrays (S, 2L) are drawn as their mean over seeds (the primary curve with the
    seeds' range as a band).

    Black (depth-coloured points): the block-variance reading of the paper,
    1 - var(X_s - Y_s) / var(X_s) over every entry of the sublayer's test block; values
    below -1 are drawn at -1 as open triangles. Grey references: the R^2 against the
    pooled mean of all test states (solid) and against each unit's own mean in the
    sublayer (dashed), clipped at -1 like the black curve (grey open triangles) and left
    out for sublayers of negligible variance (``rsdyn.cae.sublayers_with_variance``),
    which grey crosses mark on the x axis (below every value: not an R^2 of 0)."""
    from rsdyn.cae.metrics import NEGLIGIBLE_RELATIVE_VARIANCE, sublayers_with_variance

    seeds_block = np.atleast_2d(np.asarray(ev_block_per_sublayer, dtype=np.float64))
    ev_block_per_sublayer = seeds_block.mean(axis=0)
    ev_own_mean = None if ev_own_mean is None else np.atleast_2d(ev_own_mean).mean(axis=0)
    ev_pooled_reference = None if ev_pooled_reference is None else np.atleast_2d(ev_pooled_reference).mean(axis=0)
    n_sublayers = len(ev_block_per_sublayer)
    x = np.arange(n_sublayers)
    references, marked_on_axis = [], False
    if len(seeds_block) > 1:
        ax.fill_between(x, np.maximum(seeds_block.min(axis=0), -1.0), np.maximum(seeds_block.max(axis=0), -1.0), color="0.3", alpha=0.2, lw=0,
                        label=f"range over {len(seeds_block)} training seeds")
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
    draw_mean_trajectory(axes["B"], arrays["embedding"][0])  # seed 0: codes of different seeds are not aligned
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
    seeds = info.get("seeds", [0])
    figure.suptitle(
        f"Compressing autoencoder, {info.get('model_name') or ''} ({info['condition']}): "
        f"{info['n_sequences']['test']} test sequences, {len(seeds)} training seed{'s' * (len(seeds) > 1)} "
        f"(B: seed {seeds[0]}), test MSE {np.mean(info['test_loss']):.3g}, pooled test R^2 {np.mean(info['test_r2_pooled']):.2f} (mean over seeds)",
        fontsize=12,
    )
    return keep_legends_off_data(figure)


def save_fig3(cae_dir, pdf_path, png_path, dpi: int = 150, summary_path=None) -> None:
    """Draw Fig. 3 and write it, atomically, as PDF and PNG."""
    figure = fig3(cae_dir)
    mark_claims(figure, claims_of_figure(summary_path, 3))
    save_figure(figure, (pdf_path, png_path), dpi)  # bbox tight: the claims footer lies below the panels
    plt.close(figure)
