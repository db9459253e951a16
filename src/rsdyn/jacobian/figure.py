"""Fig. 5 (beyond the paper; the authors' follow-up): spectral geometry of the sublayer
Jacobians through depth, trained vs freshly initialised weights and surrogate updates.

Rows 1-2: rotation index, Henrici departure, antisymmetric share and participation ratio of
J (row 1) and of the update J - I (row 2) against the transition s -> s+1, mean +- s.e.m.
over rows; filled circles and solid lines: within-layer (attention) transitions, open
squares and dotted lines: cross-layer (MLP) transitions; trained in colour, initial in grey
(thin grey lines: each init seed's mean), the svd-matched and norm-matched surrogates in
green and red. Row 3: effective rank of the cumulative product J_s ... J_0 after every
layer, the top finite-depth Lyapunov exponents, the spectral radius and the Frobenius norm
of the update. Row 4: eigenvalues of J in the complex plane for an early, a middle and a
late transition (every row pooled; unit circle dotted, Re = 1, the identity's eigenvalue,
solid) and the participation ratio of the cumulative product.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rsdyn.core.figures import claims_of_figure, keep_legends_off_data, letter_titles, mark_claims, save_figure  # noqa: E402
from rsdyn.jacobian.settings import product_depths  # noqa: E402

WEIGHT_STYLES = {
    "trained": {"color": "C0", "label": "trained"},
    "initial": {"color": "0.55", "label": "initial"},
    "svd_matched": {"color": "C2", "label": "svd-matched surrogate"},
    "norm_matched": {"color": "C3", "label": "norm-matched surrogate"},
}
TYPE_MARKERS = {"within": ("o", "full"), "cross": ("s", "none")}
N_LYAPUNOV = 3


def cloud_transitions(n_transitions: int) -> list[int]:
    """An early, a middle and a late attention (within-layer) transition: s = 2l for
    l = round(0.1 (L-1)), L // 2 and L - 1."""
    n_layers = n_transitions // 2
    layers = [int(round(0.1 * (n_layers - 1))), n_layers // 2, n_layers - 1]
    return [2 * layer for layer in layers]


def _mean_sem(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    sem = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), sem


def draw_seed_spread(ax: Axes, group: Mapping[str, np.ndarray], key: str, x: np.ndarray, color) -> None:
    """Thin lines: the mean of ``key`` over each draw's rows (the init seeds of ``initial``)."""
    draws = np.asarray(group.get("draw", np.zeros(len(group[key]))))
    if len(np.unique(draws)) < 2:
        return
    values = np.asarray(group[key], dtype=np.float64)
    for draw in np.unique(draws):
        ax.plot(x, values[draws == draw].mean(axis=0), color=color, lw=0.5, alpha=0.6)


def draw_depth_panel(
    ax: Axes, groups: Mapping[str, Mapping[str, np.ndarray]], key: str, title: str, ylabel: str = "", depths=None
) -> None:
    """One quantity against the transition index: per weights, mean +- s.e.m. over rows,
    within (attention) and cross (MLP) transitions as separate marker series (``depths``:
    the transitions of a per-layer quantity, one series); thin lines: each init seed's mean."""
    for weights, group in groups.items():
        style = WEIGHT_STYLES.get(weights, {"color": "C1", "label": weights})
        mean, sem = _mean_sem(group[key])
        steps = np.arange(len(mean)) if depths is None else np.asarray(depths)
        draw_seed_spread(ax, group, key, steps, style["color"])
        for parity, kind in enumerate(("within", "cross") if depths is None else ("cross",)):
            marker, fill = TYPE_MARKERS[kind]
            stride = 2 if depths is None else 1
            x, y, e = steps[parity::stride], mean[parity::stride], sem[parity::stride]
            ax.fill_between(x, y - e, y + e, color=style["color"], alpha=0.15, lw=0)
            ax.plot(
                x, y, ls="-" if kind == "within" else ":", lw=0.9, marker=marker, fillstyle=fill, ms=3.5,
                color=style["color"], label=f"{style['label']}, {kind}",
            )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("transition s → s+1", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def draw_lyapunov_panel(ax: Axes, groups: Mapping[str, Mapping[str, np.ndarray]], top: int = N_LYAPUNOV, depths=None) -> None:
    """The ``top`` largest finite-depth Lyapunov exponents against depth (mean over rows; ``depths``:
    the transitions they were computed after)."""
    for weights, group in groups.items():
        style = WEIGHT_STYLES.get(weights, {"color": "C1", "label": weights})
        exponents = np.asarray(group["lyapunov"], dtype=np.float64)[..., :top].mean(axis=0)  # (depths, top)
        x = np.arange(len(exponents)) if depths is None else np.asarray(depths)
        for rank in range(exponents.shape[1]):
            ax.plot(
                x, exponents[:, rank], color=style["color"], lw=1.2 - 0.3 * rank, alpha=1 - 0.25 * rank,
                label=f"{style['label']}" if rank == 0 else None,
            )
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(f"top {top} finite-depth Lyapunov exponents", fontsize=9)
    ax.set_xlabel("depth s (product J_s … J_0)", fontsize=8)
    ax.set_ylabel("nats per transition", fontsize=8)
    ax.tick_params(labelsize=7)


def draw_cloud_panel(ax: Axes, groups: Mapping[str, Mapping[str, np.ndarray]], transition: int, name: str) -> None:
    """Eigenvalues of J_s of every sequence in the complex plane, unit circle; the initial
    weights' (usually one tight cloud inside the trained one) drawn over the trained ones,
    small and dark, so that both stay visible."""
    everything = []
    for weights in groups:
        style = WEIGHT_STYLES.get(weights, {"color": "C1", "label": weights})
        values = np.asarray(groups[weights]["eigenvalues"])[:, transition].ravel()
        everything.append(values)
        over = weights != "trained"
        ax.scatter(values.real, values.imag, s=1.5 if over else 3, color="0.2" if weights == "initial" else style["color"],
                   alpha=0.6 if over else 0.35, lw=0, label=style["label"], rasterized=True, zorder=3 if over else 2)
    circle = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(circle), np.sin(circle), color="black", lw=0.5, ls=":")
    ax.axvline(1, color="black", lw=0.3)
    values = np.concatenate(everything)
    centre = np.array([(values.real.min() + values.real.max()) / 2, 0.0])
    half = 0.55 * max(np.ptp(values.real), 2 * np.abs(values.imag).max(), 1e-3)
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(-half, half)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(f"eigenvalues of J, {name} (s = {transition})", fontsize=9)
    ax.set_xlabel("Re λ", fontsize=8)
    ax.set_ylabel("Im λ", fontsize=8)
    ax.tick_params(labelsize=7)


def fig5(arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> Figure:
    """The whole figure from the arrays of ``jacobian.zarr`` (groups ``trained`` and
    optionally ``initial``)."""
    attrs = attrs or {}
    groups = {name: arrays[name] for name in attrs.get("weights", list(WEIGHT_STYLES)) if name in arrays}
    if "trained" not in groups:
        raise ValueError("Fig. 5 needs the trained weights' group of jacobian.zarr.")
    n_transitions = np.asarray(groups["trained"]["rotation_index"]).shape[1]
    names = attrs.get("transitions") or [f"s{s}" for s in range(n_transitions)]
    depths = attrs.get("product_depths") or product_depths(n_transitions)
    figure, axes = plt.subplots(4, 4, figsize=(16, 15), layout="constrained")
    for row, (prefix, operator) in enumerate((("", "J"), ("update_", "J − I"))):
        for column, (key, label) in enumerate(
            (("rotation_index", "rotation index Σ|Im λ|/Σ|λ|"), ("henrici", "Henrici departure (normalised)"),
             ("antisymmetric_share", "antisymmetric share"), ("effective_rank_pr", "participation ratio"))
        ):
            draw_depth_panel(axes[row, column], groups, prefix + key, f"{label} of {operator}")
    draw_depth_panel(axes[2, 0], groups, "cumulative_effective_rank_entropy", "effective rank of J_s … J_0", "exp spectral entropy", depths)
    draw_lyapunov_panel(axes[2, 1], groups, depths=depths)
    draw_depth_panel(axes[2, 2], groups, "spectral_radius", "spectral radius of J (log axis)")
    draw_depth_panel(axes[2, 3], groups, "update_frobenius_norm", "‖J − I‖_F (update size, log axis)")
    for ax in (axes[2, 2], axes[2, 3]):  # positive, and one transition far above the rest: a log axis keeps both readable
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for column, transition in enumerate(cloud_transitions(n_transitions)):
        stage = ("early", "middle", "late")[column]
        draw_cloud_panel(axes[3, column], groups, transition, f"{stage}: {names[transition]}")
    draw_depth_panel(axes[3, 3], groups, "cumulative_effective_rank_pr", "participation ratio of J_s … J_0", "", depths)
    axes[0, 0].legend(fontsize=7, frameon=False)
    axes[3, 0].legend(fontsize=7, frameon=False, markerscale=4)
    axes[2, 1].legend(fontsize=7, frameon=False)
    letter_titles(axes.ravel())
    n_samples = np.asarray(groups["trained"]["rotation_index"]).shape[0]
    model = (attrs.get("model") or {}).get("name") or (attrs.get("model") or {}).get("pypi_key") or ""
    figure.suptitle(
        f"Fig. 5 — sublayer Jacobians of the last token through depth{f' ({model})' if model else ''}: "
        f"{n_samples} sequences, mean ± s.e.m.; thin lines: init seeds",
        fontsize=11,
    )
    return keep_legends_off_data(figure)


def save_fig5(jacobian_path, pdf_path, png_path, dpi: int = 150, summary_path=None) -> None:
    """Read ``jacobian.zarr``, draw Fig. 5 and write it atomically as PDF and PNG."""
    from rsdyn.jacobian.run import read_jacobian

    arrays, attrs = read_jacobian(jacobian_path)
    figure = fig5(arrays, attrs)
    mark_claims(figure, claims_of_figure(summary_path, 5))
    save_figure(figure, (pdf_path, png_path), dpi)  # bbox tight: the claims footer lies below the panels
    plt.close(figure)

