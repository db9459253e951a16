"""Figure 1: density, continuity, velocity and mutual information over depth.

Panels (PAPER.md Fig. 1): B mean activation per unit and sublayer (units sorted by
their mean at the last sublayer); C Pearson r between consecutive sublayers per unit,
and C' its median per layer by transition type; D per-unit density of r over all
sublayer pairs; E cosine similarity and F velocity by transition type; A' the number of
distinct states per sublayer (how many different RS vectors the sequences produce);
G KDE mutual information per unit and transition; H its mean over units by transition
type; H' the KSG and Gaussian estimates; H'' the paper's written (unnormalised) sum.
Blue: within-layer transitions (pre-attn -> pre-MLP); orange: cross-layer (pre-MLP ->
next pre-attn). Solid: original text; dashed: token-shuffled control.

Laid out to be read at README width (about 900 px): large fonts, short titles, one
legend per panel, colour bars labelled on their own side.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rsdyn.core.figures import claims_of_figure, keep_legends_off_data, mark_claims, panel_letter, save_figure
from rsdyn.core.store import open_group, read_group
from rsdyn.units.layer_stats import read_layer_stats

CONDITION_STYLE = {"original": "-", "shuffled": "--"}
TYPE_COLOR = {"within": "tab:blue", "cross": "tab:orange"}
TYPE_LABEL = {"within": "within (attn)", "cross": "cross (MLP)"}
FEW_STATES = 50
STYLE = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "legend.fontsize": 11,
         "xtick.labelsize": 12, "ytick.labelsize": 12, "lines.linewidth": 1.8}


def _label(ax, letter: str) -> None:
    """The panel letter above the axes' top-left corner (never on its data or legend)."""
    panel_letter(ax, letter)


def _layer_ticks(ax, n_positions: int, per_layer: int = 2, axis: str = "x") -> None:
    """Ticks at the first position of every k-th layer, labelled with the layer index."""
    n_layers = max(1, n_positions // per_layer)
    step = max(1, int(np.ceil(n_layers / 6)))
    layers = np.arange(0, n_layers, step)
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    set_ticks(layers * per_layer, [str(layer) for layer in layers])


def _image(fig, ax, values, cmap, label, vmin=None, vmax=None, above: bool = False):
    """A heat map with its colour bar, labelled on its outer side, or above it (``above``:
    where the next panel's y label would stand right beside the bar's label)."""
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    if above:
        bar.ax.set_title(label, fontsize=12)
    else:
        bar.set_label(label)
    return image


def _by_type(values: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{type: (layer index, values)} for within (even transitions) and cross (odd)."""
    return {kind: (np.arange(len(values[start::2])), values[start::2]) for kind, start in (("within", 0), ("cross", 1))}


def _transitions(table: pd.DataFrame, condition: str) -> pd.DataFrame:
    return table[(table["kind"] == "transition") & (table["condition"] == condition)].sort_values("index")


def _type_legend(ax, conditions: bool = True, **kwargs) -> None:
    handles = [mpl.lines.Line2D([], [], color=TYPE_COLOR[kind], label=TYPE_LABEL[kind]) for kind in TYPE_COLOR]
    if conditions:
        handles += [mpl.lines.Line2D([], [], color="0.3", ls=style, label=condition) for condition, style in CONDITION_STYLE.items()]
    ax.legend(handles=handles, **kwargs)


def _plain_log(ax) -> None:
    """A log y axis labelled with plain numbers at its major ticks only."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(mpl.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())


def _zoomed_limits(values: np.ndarray, skip: int = 1, pad: float = 0.08) -> tuple[float, float]:
    """y limits that span ``values`` from position ``skip`` on (the first transitions may lie far below)."""
    rest = values[..., skip:]
    rest = rest[np.isfinite(rest)]
    if rest.size == 0:
        return 0.0, 1.0
    low, high = float(rest.min()), float(rest.max())
    margin = pad * max(high - low, 1e-6)
    return low - margin, high + margin


def make_fig1(unit_stats: Mapping, layer_table: pd.DataFrame, title: str = "") -> Figure:
    """Figure 1 from ``read_group(unit_stats.zarr)`` and the ``layer_stats.csv`` table.

    Transitions that are undefined for every unit (a sublayer constant across samples)
    are left blank.
    """
    with warnings.catch_warnings(), mpl.rc_context(STYLE):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN transitions
        return _draw_fig1(unit_stats, layer_table, title)


def _draw_fig1(unit_stats: Mapping, layer_table: pd.DataFrame, title: str) -> Figure:
    original = unit_stats["original"]
    mean_activation = original["mean_activation"]  # (S, D)
    n_sublayers, n_units = mean_activation.shape
    fig = Figure(figsize=(18, 15), layout="constrained")
    # one subfigure per row: constrained layout then sizes each row's margins on its own
    # (a shared 12-column grid collapses once colour bars and labels outgrow a column)
    rows = fig.subfigures(3, 1)
    top, middle, bottom = list(rows[0].subplots(1, 4)), list(rows[1].subplots(1, 4)), list(rows[2].subplots(1, 3))

    ax = top[0]
    order = np.argsort(mean_activation[-1])
    limit = np.percentile(np.abs(mean_activation), 99) or 1.0
    _image(fig, ax, mean_activation[:, order].T, "RdBu_r", "mean activation", -limit, limit)
    ax.set(title="Mean activation", xlabel="layer", ylabel="unit (sorted by last sublayer)")
    _layer_ticks(ax, n_sublayers)
    _label(ax, "B")

    r = original["corr_consecutive"]  # (T, D)
    unit_order = np.argsort(np.nanmean(r, axis=0))
    ax = top[1]
    _image(fig, ax, r[:, unit_order].T, "viridis", "r", max(0.0, float(np.nanpercentile(r, 1))), 1.0, above=True)
    ax.set(title="r(sublayer t, t+1) per unit", xlabel="layer", ylabel="unit (sorted by mean r)")
    _layer_ticks(ax, r.shape[0] + 1)
    _label(ax, "C")

    ax = top[2]
    for condition, style in CONDITION_STYLE.items():
        median = np.nanmedian(unit_stats[condition]["corr_consecutive"], axis=1)
        for kind, (layers, values) in _by_type(median).items():
            ax.plot(layers, values, style, color=TYPE_COLOR[kind])
    q25, q75 = np.nanpercentile(r, [25, 75], axis=1)
    for kind, (layers, low) in _by_type(q25).items():
        ax.fill_between(layers, low, _by_type(q75)[kind][1], color=TYPE_COLOR[kind], alpha=0.15, lw=0)
    ax.set(title="Median r over units", xlabel="layer", ylabel="median Pearson r (band: IQR)")
    _type_legend(ax, loc="lower right")
    _label(ax, "C'")

    ax = top[3]
    hist = original["corr_pairs_hist"]  # (D, bins) over r in [0, 1]; r < 0 and undefined r in no bin
    bins = hist.shape[1]
    pair_order = np.argsort(hist @ (np.arange(bins) + 0.5))
    # a square-root colour scale: the few units whose pairs pile up near r = 1 would leave
    # every other cell black on a linear one
    norm = mpl.colors.PowerNorm(0.5, vmin=0.0, vmax=max(float(np.nanmax(hist)), 1e-9))
    image = ax.imshow(hist[pair_order], aspect="auto", interpolation="nearest", cmap="magma", origin="lower",
                      extent=(0, 1, 0, n_units), norm=norm)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("fraction of pairs (square-root scale)")
    outside = 1.0 - float(np.nanmean(hist.sum(axis=1)))
    ax.set(title="r over all pairs l < m", xlabel=f"Pearson r\n(r < 0 or undefined: {outside:.0%} of pairs, not shown)",
           ylabel="unit (sorted by mean r)")
    _label(ax, "D")

    ax = middle[0]
    cosine_all = []
    for condition, style in CONDITION_STYLE.items():
        rows = _transitions(layer_table, condition)
        if rows.empty:
            continue
        mean = rows["cosine_mean"].to_numpy()
        cosine_all.append(mean)
        for kind, (layers, values) in _by_type(mean).items():
            ax.plot(layers, values, style, color=TYPE_COLOR[kind])
    low, high = _zoomed_limits(np.concatenate([c[2:] for c in cosine_all]) if cosine_all else np.zeros(1), skip=0)
    ax.set_ylim(low, min(high, 1.0 + (high - low) * 0.02))
    off = [(kind, condition, values[0]) for condition, c in zip(CONDITION_STYLE, cosine_all)
           for kind, (_, values) in _by_type(c).items() if values[0] < low]
    if off:
        text = "below the axis at layer 0:\n" + "\n".join(f"{TYPE_LABEL[k].split()[0]}, {c}: {v:.2f}" for k, c, v in off)
        ax.annotate(text, xy=(0, low), xytext=(0.22, 0.36), textcoords="axes fraction", fontsize=10,
                    arrowprops={"arrowstyle": "->", "color": "0.5"}, color="0.25", va="bottom")
    ax.set(title="Cosine similarity (zoomed)", xlabel="layer", ylabel="cos(h_t, h_t+1), mean")
    _type_legend(ax, loc="lower right", ncols=2, fontsize=10)
    _label(ax, "E")

    ax = middle[1]
    for condition, style in CONDITION_STYLE.items():
        rows = _transitions(layer_table, condition)
        if rows.empty:
            continue
        mean = rows["velocity_mean"].to_numpy()
        spread = rows["velocity_sd"].to_numpy() if "velocity_sd" in rows else rows["velocity_sem"].to_numpy()
        for kind, (layers, values) in _by_type(mean).items():
            ax.plot(layers, values, style, color=TYPE_COLOR[kind])
            if condition == "original":
                errors = _by_type(spread)[kind][1]
                ax.fill_between(layers, np.maximum(values - errors, values * 0.05), values + errors,
                                color=TYPE_COLOR[kind], alpha=0.18, lw=0)
    _plain_log(ax)
    band = "± 1 s.d. over sequences" if "velocity_sd" in layer_table else "± s.e.m."
    ax.set(title="Velocity ||h_t+1 - h_t||", xlabel="layer", ylabel=f"velocity (band: {band})")
    _type_legend(ax, loc="upper left", fontsize=10)
    _label(ax, "F")

    ax = middle[2]
    sublayers = layer_table[layer_table["kind"] == "sublayer"]
    if "distinct_states" in sublayers:
        for condition, style in CONDITION_STYLE.items():
            rows = sublayers[sublayers["condition"] == condition].sort_values("index")
            ax.plot(rows["index"], rows["distinct_states"], style, color="0.2", label=condition, marker="o" if len(rows) < 12 else None)
        ax.axhline(FEW_STATES, color="tab:red", lw=1, ls=":")
        ax.text(n_sublayers - 1, FEW_STATES * 1.1, f"{FEW_STATES}", color="tab:red", ha="right", va="bottom", fontsize=10)
        _plain_log(ax)
        counts = sublayers["distinct_states"].to_numpy(dtype=float)
        ax.set_ylim(min(FEW_STATES / 2, np.nanmin(counts) / 1.5), max(FEW_STATES * 2, np.nanmax(counts) * 1.5))
        first = sublayers[(sublayers["condition"] == "original") & (sublayers["index"] == 0)]["distinct_states"]
        if len(first):
            ax.annotate(f"sublayer 0: {int(first.iloc[0])}", xy=(0, int(first.iloc[0])), xytext=(0.3, 0.2),
                        textcoords="axes fraction", arrowprops={"arrowstyle": "->", "color": "0.4"}, fontsize=11)
        ax.legend(loc="lower right")
    ax.set(title="Distinct states per sublayer", xlabel="layer", ylabel="distinct RS vectors")
    _layer_ticks(ax, n_sublayers)
    _label(ax, "A'")

    ax = middle[3]
    mi = original["mi_kde"]
    _image(fig, ax, mi[:, unit_order].T, "viridis", "MI (nats, KDE)", 0.0, float(np.nanpercentile(mi, 99)))
    ax.set(title="MI(t, t+1) per unit", xlabel="layer", ylabel="unit (sorted as C)")
    _layer_ticks(ax, mi.shape[0] + 1)
    _label(ax, "G")

    def mean_over_units(values):
        return np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=1)

    ax = bottom[0]
    for condition, style in CONDITION_STYLE.items():
        for kind, (layers, values) in _by_type(mean_over_units(unit_stats[condition]["mi_kde"])).items():
            ax.plot(layers, values, style, color=TYPE_COLOR[kind])
    ax.set(title="Mean MI over units, KDE (paper)", xlabel="layer", ylabel="MI (nats)")
    _type_legend(ax, loc="lower right", ncols=2, fontsize=10)
    _label(ax, "H")

    ax = bottom[1]
    for estimator, style in (("mi_ksg", "-"), ("mi_gaussian", ":")):
        for kind, (layers, values) in _by_type(mean_over_units(original[estimator])).items():
            ax.plot(layers, values, style, color=TYPE_COLOR[kind])
    handles = [mpl.lines.Line2D([], [], color=TYPE_COLOR[k], label=TYPE_LABEL[k]) for k in TYPE_COLOR]
    handles += [mpl.lines.Line2D([], [], color="0.3", ls="-", label="KSG"),
                mpl.lines.Line2D([], [], color="0.3", ls=":", label="Gaussian, -½ln(1-r²)")]
    ax.legend(handles=handles, loc="lower right", ncols=2, fontsize=10)
    ax.set(title="Mean MI, KSG and Gaussian (original)", xlabel="layer", ylabel="MI (nats)")
    _label(ax, "H'")

    ax = bottom[2]
    if "mi_kde_literal" in original:
        for kind, (layers, values) in _by_type(mean_over_units(original["mi_kde_literal"])).items():
            ax.plot(layers, values, "-", color=TYPE_COLOR[kind])
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_locator(mpl.ticker.SymmetricalLogLocator(linthresh=1.0, base=100))
        ax.yaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.axhline(0.0, color="0.6", lw=0.8)
        _type_legend(ax, conditions=False, loc="upper right")
    ax.set(title="Paper's written sum Σ p log(p/pp) (original)", xlabel="layer",
           ylabel="Σ over samples (not normalised)")
    _label(ax, "H''")

    for ax in (top[2], middle[0], middle[1], bottom[0], bottom[1], bottom[2]):
        n_layers = int(np.ceil((r.shape[0] + 1) / 2))
        ax.set_xlim(-0.5, n_layers - 0.5)
    if title:
        fig.suptitle(title, fontsize=16)
    return keep_legends_off_data(fig)


def save_fig1(unit_stats_path, layer_stats_path, pdf_path, png_path, dpi: int = 150, model: str = "", summary_path=None) -> None:
    """Rule ``fig1``: Fig. 1 of ``unit_stats.zarr`` and ``layer_stats.csv`` -> PDF and PNG
    (titled with the store's model name, else ``model``)."""
    stats = read_group(unit_stats_path)
    name = open_group(unit_stats_path).attrs.get("model_name", model)
    n_sublayers = stats["original"]["corr_consecutive"].shape[0] + 1
    table = read_layer_stats(layer_stats_path, n_sublayers)
    figure = make_fig1(stats, table, title=f"Fig. 1 - {name}")
    mark_claims(figure, claims_of_figure(summary_path, 1))
    save_figure(figure, [pdf_path, png_path], dpi=dpi)
