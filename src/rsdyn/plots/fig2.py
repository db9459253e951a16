"""Figure 2: rotations of single units in their phase portraits.

A: phase portraits (x = a_l - a_0, y = g_l - g_0, g = gradient over sublayers) of
example units chosen by a fixed rule: the units at evenly spaced ranks of R, from the
most negative to the most positive. B: distribution of R over units against the
pooled layer-shuffle null and the pooled surrogate null (and the token-shuffled
condition). C: R of every unit, sorted, with each unit's central 95% null bands.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from rsdyn.rotations import phase_portrait


def example_units(rotations: np.ndarray, n_units: int) -> np.ndarray:
    """The units at ``n_units`` evenly spaced ranks of R (lowest to highest)."""
    order = np.argsort(rotations, kind="stable")
    ranks = np.unique(np.round(np.linspace(0, len(order) - 1, min(n_units, len(order)))).astype(int))
    return order[ranks]


def make_fig2(unit_stats: Mapping, n_example_units: int = 6, surrogate: str = "surrogate", title: str = "") -> Figure:
    """Figure 2 from ``read_group(unit_stats.zarr)``."""
    original, shuffled = unit_stats["original"], unit_stats["shuffled"]
    rotations = original["rotations"]
    units = unit_stats.get("units", np.arange(len(rotations)))
    examples = example_units(rotations, n_example_units)
    n_columns = min(len(examples), 3)
    n_rows = int(np.ceil(len(examples) / n_columns))
    fig = Figure(figsize=(15, 4.2 * (n_rows + 1)), layout="constrained")
    grid = fig.add_gridspec(n_rows + 1, 2 * n_columns)

    for position, unit in enumerate(examples):
        row, column = divmod(position, n_columns)
        ax = fig.add_subplot(grid[row, 2 * column : 2 * column + 2])
        x, y = phase_portrait(original["mean_activation"][:, unit])
        ax.plot(x, y, color="0.6", lw=0.8, zorder=1)
        points = ax.scatter(x, y, c=np.arange(len(x)), cmap="viridis", s=14, zorder=2)
        ax.plot(x[0], y[0], "k*", ms=9, label="sublayer 0")
        ax.set(
            title=f"unit {units[unit]}: R = {rotations[unit]:.2f} "
            f"(layer-shuffle null {original['rotations_null_mean'][unit]:.2f} ± {original['rotations_null_std'][unit]:.2f})",
            xlabel="$a_l - a_0$ (activation)", ylabel="$g_l - g_0$ (activation per sublayer)",
        )
        ax.title.set_fontsize(9)
        if position == 0:
            ax.legend(fontsize=8, loc="best")
            ax.text(-0.1, 1.08, "A", transform=ax.transAxes, fontsize=13, fontweight="bold")
        if column == n_columns - 1:
            fig.colorbar(points, ax=ax, label="sublayer")

    ax = fig.add_subplot(grid[n_rows, :n_columns])
    null = original["rotations_null_samples"].ravel()
    surrogate_null = original["rotations_surrogate_samples"].ravel()
    everything = np.concatenate([rotations, null, surrogate_null, shuffled["rotations"]])
    bins = np.linspace(np.percentile(everything, 0.5), np.percentile(everything, 99.5), 40)
    ax.hist(null, bins=bins, density=True, color="0.7", label="layer-shuffle null (all units)")
    ax.hist(surrogate_null, bins=bins, density=True, histtype="step", lw=1.5, color="tab:orange", label=f"{surrogate} null (all units)")
    ax.hist(shuffled["rotations"], bins=bins, density=True, histtype="step", lw=1.5, ls="--", color="tab:blue", label="units, token-shuffled text")
    ax.hist(rotations, bins=bins, density=True, histtype="step", lw=2, color="tab:blue", label="units, original text")
    ax.axvline(rotations.mean(), color="tab:blue", lw=1)
    ax.axvline(null.mean(), color="0.4", lw=1)
    ax.set(title=f"Rotation number R: mean {rotations.mean():.2f} (layer-shuffle null {null.mean():.2f}, "
           f"{surrogate} null {surrogate_null.mean():.2f})", xlabel="R (signed turns; < 0 = clockwise)", ylabel="density")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    ax.text(-0.06, 1.04, "B", transform=ax.transAxes, fontsize=13, fontweight="bold")

    ax = fig.add_subplot(grid[n_rows, n_columns:])
    order = np.argsort(rotations, kind="stable")
    rank = np.arange(len(order))
    ax.fill_between(rank, original["rotations_null_q025"][order], original["rotations_null_q975"][order],
                    color="0.75", lw=0, label="layer-shuffle null, central 95%")
    ax.fill_between(rank, original["rotations_surrogate_q025"][order], original["rotations_surrogate_q975"][order],
                    color="tab:orange", alpha=0.3, lw=0, label=f"{surrogate} null, central 95%")
    def outside(name: str) -> np.ndarray:
        percentile = original[f"rotations_{name}_percentile"]
        return (percentile < 2.5) | (percentile > 97.5)

    beyond, beyond_surrogate = outside("null"), outside("surrogate")
    ax.scatter(rank, rotations[order], s=4, c=np.where(beyond[order], "tab:red", "tab:blue"), zorder=3)
    ax.scatter([], [], s=8, c="tab:red", label=f"outside its layer-shuffle 95% ({beyond.mean():.0%} of units)")
    ax.scatter([], [], s=8, c="tab:blue", label=f"inside (outside its {surrogate} 95%: {beyond_surrogate.mean():.0%})")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(title="R per unit, sorted, with each unit's own null band", xlabel="unit rank by R", ylabel="R (turns)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    ax.text(-0.06, 1.04, "C", transform=ax.transAxes, fontsize=13, fontweight="bold")

    fig.suptitle((title + "\n" if title else "") + "Example units: evenly spaced ranks of R, from most negative to most positive", fontsize=11)
    return fig
