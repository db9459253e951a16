"""Figure 2: rotations of single units in their phase portraits, and of the population.

A: phase portraits (x = a_l - a_0, y = g_l - g_0, g = gradient over sublayers) of
example units chosen by a fixed rule: the units at evenly spaced ranks of R, from the
most negative to the most positive. Depth runs from light to dark along the path, with
arrowheads along it and the first and last sublayer marked, so the direction reads
without a colour bar. B: R of every unit against each null, pooled over units
(point shuffle, increment shuffle, layer shuffle, smooth surrogate and, with a
population store, tensor-maximum-entropy surrogates), with the fraction of units that
differ from their own null at FDR 0.05. C: R of every unit, sorted, with each unit's
central 95 % null bands; C': the FDR fractions per null. D: the first jPC plane's
trajectories (original and token-shuffled text) and jpca_ratio against its TME null,
for the states (solid) and for their deviations from the mean sequence (dashed).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from rsdyn.core.figures import claims_of_figure, keep_legends_off_data, legend_entries, mark_claims, save_figure
from rsdyn.core.store import open_group, read_group
from rsdyn.units.rotations import phase_portrait, stored_nulls

NULL_COLORS = {
    "point_shuffle": "tab:green", "increment_shuffle": "tab:purple", "layer_shuffle": "0.45",
    "phase": "tab:orange", "circular": "tab:orange", "tme": "tab:brown",
}
NULL_NAMES = {
    "point_shuffle": "point shuffle", "increment_shuffle": "increment shuffle", "layer_shuffle": "layer shuffle",
    "phase": "phase surrogate", "circular": "circular surrogate", "tme": "TME surrogate",
}
DEPTH_CMAP = "viridis_r"  # light (yellow) = first sublayer, dark (purple) = last


def example_units(rotations: np.ndarray, n_units: int) -> np.ndarray:
    """The units at ``n_units`` evenly spaced ranks of R (lowest to highest)."""
    order = np.argsort(rotations, kind="stable")
    ranks = np.unique(np.round(np.linspace(0, len(order) - 1, min(n_units, len(order)))).astype(int))
    return order[ranks]


def _letter(ax, letter: str) -> None:
    ax.text(-0.1, 1.06, letter, transform=ax.transAxes, fontsize=13, fontweight="bold", va="bottom")


def depth_path(ax, x: np.ndarray, y: np.ndarray, n_arrows: int = 8, lw: float = 1.0, alpha: float = 1.0, ends: bool = True) -> None:
    """A path drawn light -> dark over depth, with arrowheads along it and its ends marked."""
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection

    colors = colormaps[DEPTH_CMAP](np.linspace(0.05, 1.0, max(len(x) - 1, 1)))
    segments = np.stack([np.column_stack([x[:-1], y[:-1]]), np.column_stack([x[1:], y[1:]])], axis=1)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=lw, alpha=alpha))
    for step in np.unique(np.linspace(0, len(x) - 2, n_arrows).astype(int)) if n_arrows else []:
        ax.annotate("", xy=(x[step + 1], y[step + 1]), xytext=(x[step], y[step]),
                    arrowprops={"arrowstyle": "-|>", "color": colors[step], "lw": lw, "mutation_scale": 9, "alpha": alpha})
    if ends:
        ax.plot(x[0], y[0], marker="o", ms=6, mfc="white", mec="k", zorder=4, label="first sublayer")
        ax.plot(x[-1], y[-1], marker="s", ms=6, color="k", zorder=4, label="last sublayer")
    ax.update_datalim(np.column_stack([x, y]))
    ax.autoscale_view()


def _portraits(fig, original, units, examples, n_columns) -> None:
    n_rows = int(np.ceil(len(examples) / n_columns))
    axes = fig.subplots(n_rows, n_columns, squeeze=False).ravel()
    for ax in axes[len(examples):]:
        ax.set_visible(False)
    for position, unit in enumerate(examples):
        ax = axes[position]
        x, y = phase_portrait(original["mean_activation"][:, unit])
        depth_path(ax, x, y)
        null = "layer_shuffle" if "rotations_layer_shuffle_mean" in original else stored_nulls(original)[0]
        ax.set(
            title=f"unit {units[unit]}: R = {original['rotations'][unit]:.2f}\n"
            f"({NULL_NAMES[null]} null {original[f'rotations_{null}_mean'][unit]:.2f} ± {original[f'rotations_{null}_std'][unit]:.2f})",
            xlabel="$a_l - a_0$ (activation)", ylabel="$g_l - g_0$ (activation per sublayer)",
        )
        ax.title.set_fontsize(9)
        if position == 0:
            ax.legend(fontsize=8, loc="best", title="depth: light → dark", title_fontsize=8)
            _letter(ax, "A")


def _null_samples(original: Mapping, population: Mapping | None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per null: pooled samples, each unit's FDR decision, and the null mean per unit."""
    out = {}
    for null in stored_nulls(original):
        fdr = original.get(f"rotations_{null}_fdr")
        out[null] = (np.asarray(original[f"rotations_{null}_samples"]).ravel(), None if fdr is None else np.asarray(fdr, bool),
                     np.asarray(original[f"rotations_{null}_mean"]))
    if population is not None:
        tme = population["original"]["tme_rotations"]
        out["tme"] = (np.asarray(tme["samples"]).ravel(), np.asarray(tme["fdr"], bool), np.asarray(tme["mean"]))
    return out


def _histograms(fig, rotations, shuffled_rotations, nulls) -> None:
    """One panel per null, on one x range that holds every unit and every null draw (the
    point-shuffle null is symmetric about 0: both its tails are shown), and one legend for
    the row beside it: every null's colour and the units' outlines."""
    everything = np.concatenate([rotations, shuffled_rotations, *[samples for samples, _, _ in nulls.values()]])
    everything = everything[np.isfinite(everything)]
    bins = np.linspace(everything.min(), everything.max(), 48)
    axes = fig.subplots(1, len(nulls), sharey=True, squeeze=False)[0]
    for index, (null, (samples, fdr, _)) in enumerate(nulls.items()):
        ax = axes[index]
        ax.hist(samples, bins=bins, density=True, color=NULL_COLORS[null], alpha=0.45, label=f"{NULL_NAMES[null]} null")
        ax.hist(rotations, bins=bins, density=True, histtype="step", lw=2, color="tab:blue", label="units, original")
        ax.hist(shuffled_rotations, bins=bins, density=True, histtype="step", lw=1.2, ls="--", color="tab:blue", label="units, token-shuffled")
        ax.axvline(samples.mean(), color=NULL_COLORS[null], lw=1.5)
        ax.axvline(rotations.mean(), color="tab:blue", lw=1)
        fraction = "" if fdr is None else f"\n{fdr.mean():.0%} of units differ (FDR 0.05)"
        ax.set_title(f"{NULL_NAMES[null]}: null mean {samples.mean():.2f}{fraction}", fontsize=9)
        ax.set_xlabel("R (turns; < 0 = clockwise)")
        ax.set_xlim(bins[0], bins[-1])
        if index == 0:
            ax.set_ylabel("density")
            _letter(ax, "B")
    handles, labels = legend_entries(axes)
    order = [i for i, label in enumerate(labels) if label.startswith("units")] + [i for i, label in enumerate(labels) if not label.startswith("units")]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside right upper", fontsize=7, frameon=False)


def _bands(fig, original, rotations, nulls) -> None:
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    ax = left
    order = np.argsort(rotations, kind="stable")
    rank = np.arange(len(order))
    for null in ("layer_shuffle", "increment_shuffle", *[n for n in ("phase", "circular") if n in nulls]):
        if f"rotations_{null}_q025" in original:
            ax.fill_between(rank, original[f"rotations_{null}_q025"][order], original[f"rotations_{null}_q975"][order],
                            color=NULL_COLORS[null], alpha=0.3, lw=0, label=f"{NULL_NAMES[null]} null, central 95%")
    ax.scatter(rank, rotations[order], s=4, color="tab:blue", zorder=3, label="R of each unit")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(title="R per unit, sorted, with each unit's own null bands", xlabel="unit rank by R", ylabel="R (turns)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    _letter(ax, "C")

    ax = right
    names = [null for null, (_, fdr, _) in nulls.items() if fdr is not None]
    differ = [nulls[null][1].mean() for null in names]
    more = [(nulls[null][1] & (np.abs(rotations) > np.abs(nulls[null][2]))).mean() for null in names]
    position = np.arange(len(names))
    ax.bar(position - 0.2, differ, width=0.4, color=[NULL_COLORS[n] for n in names], alpha=0.5, label="differ from the null (two-sided)")
    ax.bar(position + 0.2, more, width=0.4, color=[NULL_COLORS[n] for n in names], label="... and turn more than it")
    for x, value in zip(position, differ):
        ax.text(x - 0.2, value + 0.01, f"{value:.0%}", ha="center", fontsize=7)
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.set_xticks(position, [NULL_NAMES[n] for n in names], fontsize=8, rotation=15)
    ax.set(ylim=(0, 1.05), ylabel="fraction of units (BH, q = 0.05)", title="Units beyond each null (Benjamini-Hochberg)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    _letter(ax, "C′")


def _jpca_panels(fig, population, n_trajectories: int = 40) -> None:
    axes = fig.subplots(1, 3)
    for index, condition in enumerate(("original", "shuffled")):
        group = population[condition]["jpca"]
        ax = axes[index]
        projection = np.asarray(group["projection"])
        chosen = np.unique(np.linspace(0, len(projection) - 1, min(n_trajectories, len(projection))).astype(int))
        for sample in chosen:
            depth_path(ax, projection[sample, :, 0], projection[sample, :, 1], n_arrows=0, lw=0.5, alpha=0.4, ends=False)
        mean = projection.mean(axis=0)
        depth_path(ax, mean[:, 0], mean[:, 1], n_arrows=10, lw=2.2)
        turns = float(np.asarray(group["turns_per_sublayer"])[0]) if len(group["turns_per_sublayer"]) else 0.0
        ax.set(title=f"{'original' if condition == 'original' else 'token-shuffled'} text: first jPC plane\n"
                     f"{turns:.3f} turns/sublayer, jpca_ratio {float(group['jpca_ratio']):.2f}",
               xlabel="jPC1", ylabel="jPC2")
        ax.title.set_fontsize(9)
        if index == 0:
            ax.legend(fontsize=7, loc="best", title=f"{len(chosen)} sequences + mean", title_fontsize=7)
            _letter(ax, "D")

    ax = axes[2]
    for condition, color in (("original", "tab:blue"), ("shuffled", "tab:red")):
        group = population[condition]["jpca"]
        null = np.asarray(group["tme_jpca_ratio"])
        ax.hist(null, bins=20, color=color, alpha=0.35, density=True, label=f"TME null ({condition})")
        ax.axvline(float(group["jpca_ratio"]), color=color, lw=2,
                   label=f"{condition}: {float(group['jpca_ratio']):.2f} (TME percentile {float(group['tme_percentile']):.0f})")
        if "jpca_deviations" in population[condition]:
            deviations = population[condition]["jpca_deviations"]
            ax.axvline(float(deviations["jpca_ratio"]), color=color, lw=1.5, ls="--",
                       label=f"{condition}, deviations from the mean sequence: {float(deviations['jpca_ratio']):.2f} "
                             f"(percentile {float(deviations['tme_percentile']):.0f})")
    windows = [name for name in population["original"] if name.startswith("window_") and not name.endswith("_deviations")]
    for name in windows:
        group = population["original"][name]
        ax.axvline(float(group["jpca_ratio"]), color="tab:blue", lw=0.8, ls=":")
    ax.set(xlabel="jpca_ratio = R² skew-symmetric / R² best linear", ylabel="density",
           title="jpca_ratio vs tensor-maximum-entropy surrogates" + ("\n(dotted: original, per depth window)" if windows else ""))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: never over the histograms


def make_fig2(unit_stats: Mapping, population: Mapping | None = None, n_example_units: int = 6, title: str = "") -> Figure:
    """Figure 2 from ``read_group(unit_stats.zarr)`` and ``read_group(population.zarr)``
    (panel D and the TME null are left out without the latter)."""
    original, shuffled = unit_stats["original"], unit_stats["shuffled"]
    rotations = np.asarray(original["rotations"])
    units = unit_stats.get("units", np.arange(len(rotations)))
    examples = example_units(rotations, n_example_units)
    n_columns = min(len(examples), 3)
    n_rows = int(np.ceil(len(examples) / n_columns))
    heights = [3.6 * n_rows, 3.4, 3.6] + ([4.2] if population is not None else [])
    fig = Figure(figsize=(16, sum(heights) + 0.8), layout="constrained")
    panels = fig.subfigures(len(heights), 1, height_ratios=heights)
    _portraits(panels[0], original, units, examples, n_columns)
    nulls = _null_samples(original, population)
    _histograms(panels[1], rotations, np.asarray(shuffled["rotations"]), nulls)
    _bands(panels[2], original, rotations, nulls)
    if population is not None:
        _jpca_panels(panels[3], population)
    fig.suptitle((title + "\n" if title else "") + "Example units: evenly spaced ranks of R, from most negative to most positive", fontsize=11)
    return keep_legends_off_data(fig)


def save_fig2(unit_stats_path, population_path, pdf_path, png_path, n_example_units: int = 6, dpi: int = 150, model: str = "",
              summary_path=None) -> None:
    """Rule ``fig2``: Fig. 2 of ``unit_stats.zarr`` and ``population.zarr`` -> PDF and PNG
    (titled with the store's model name, else ``model``)."""
    name = open_group(unit_stats_path).attrs.get("model_name", model)
    figure = make_fig2(read_group(unit_stats_path), read_group(population_path), n_example_units=n_example_units, title=f"Fig. 2 - {name}")
    mark_claims(figure, claims_of_figure(summary_path, 2))
    save_figure(figure, [pdf_path, png_path], dpi=dpi)
