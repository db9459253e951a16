"""Population statistics per sublayer and per transition (Fig. 1B, E, F).

Per sublayer: mean |activation| over samples and units, mean and s.e.m. over samples
of the L2 norm of the residual-stream vector, the density (fraction of units whose
mean activation over samples exceeds a threshold in absolute value), and the number of
distinct states (distinct rows of the sublayer's (N, D) matrix: sublayer 0 is the
embedding of the last token, so it has as many states as there are distinct last tokens).
Per transition l -> l + 1: cosine similarity and velocity ||h_{l+1} - h_l||_2 of each
sample's residual-stream vectors (mean and s.e.m. over samples), with the transition
type: ``within`` (pre-attn -> pre-MLP of the same layer, the attention update) or
``cross`` (pre-MLP -> next layer's pre-attn, the MLP update).

Every quantity is a sum over units, so the store is streamed one unit chunk at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rsdyn.adapters import sublayer_names as default_sublayer_names
from rsdyn.errors import UnitStatsInputError
from rsdyn.store import open_group
from rsdyn.unit_stats import CONDITIONS, MIN_SAMPLES

COLUMNS = [
    "condition", "kind", "index", "name", "layer", "site", "transition_type",
    "mean_abs_activation", "norm_mean", "norm_sem", "density", "distinct_states",
    "cosine_mean", "cosine_sem", "velocity_mean", "velocity_sem",
]


def transition_type(transition: int) -> str:
    """``within`` for 2l -> 2l+1 (attention update), ``cross`` for 2l+1 -> 2l+2 (MLP update)."""
    return "within" if transition % 2 == 0 else "cross"


class LayerSums:
    """Running sums over units of one condition, fed one unit block (N, S, U) at a time."""

    def __init__(self, n_samples: int, n_sublayers: int, n_units: int):
        self.n_units = n_units
        self.abs_sum = np.zeros(n_sublayers)
        self.squared_norm = np.zeros((n_samples, n_sublayers))
        self.dot = np.zeros((n_samples, n_sublayers - 1))
        self.squared_step = np.zeros((n_samples, n_sublayers - 1))
        self.mean_activation = np.zeros((n_sublayers, n_units))

        # per sublayer, a label per sample: equal labels = equal states on the units seen so far
        self.state_labels = np.zeros((n_sublayers, n_samples), dtype=np.int64)

    def add(self, block: np.ndarray, unit_start: int) -> None:
        for sublayer in range(block.shape[1]):
            self.state_labels[sublayer] = refine_labels(self.state_labels[sublayer], block[:, sublayer])
        self.abs_sum += np.abs(block).sum(axis=(0, 2))
        self.squared_norm += np.square(block).sum(axis=2)
        self.dot += (block[:, :-1] * block[:, 1:]).sum(axis=2)
        self.squared_step += np.square(block[:, 1:] - block[:, :-1]).sum(axis=2)
        self.mean_activation[:, unit_start : unit_start + block.shape[2]] = block.mean(axis=0)


def refine_labels(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 of the distinct rows of ``[labels, values]``: (N,), (N, U) -> (N,).

    Feeding a sublayer's unit blocks one after the other leaves equal labels exactly on
    the samples whose states are equal on every unit (exact float equality).
    """
    rows = np.column_stack([labels.astype(np.float64), values])
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def distinct_states(acts: np.ndarray) -> np.ndarray:
    """Number of distinct state vectors (rows) of each sublayer: (N, S, D) -> (S,) int."""
    labels = np.zeros(acts.shape[0], dtype=np.int64)
    return np.array([len(np.unique(refine_labels(labels, acts[:, s]))) for s in range(acts.shape[1])])


def _mean_sem(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean over samples (axis 0)."""
    return values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])


def rows_from_sums(sums: LayerSums, condition: str, names: list[str], density_threshold: float) -> list[dict]:
    """The CSV rows (one per sublayer, one per transition) of one condition."""
    n_samples, n_sublayers = sums.squared_norm.shape
    norm = np.sqrt(sums.squared_norm)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = sums.dot / (norm[:, :-1] * norm[:, 1:])
    velocity = np.sqrt(sums.squared_step)
    norm_mean, norm_sem = _mean_sem(norm)
    cosine_mean, cosine_sem = _mean_sem(cosine)
    velocity_mean, velocity_sem = _mean_sem(velocity)
    density = (np.abs(sums.mean_activation) > density_threshold).mean(axis=1)
    rows = []
    for sublayer in range(n_sublayers):
        rows.append({
            "condition": condition, "kind": "sublayer", "index": sublayer, "name": names[sublayer],
            "layer": sublayer // 2, "site": names[sublayer].split(".")[-1],
            "mean_abs_activation": sums.abs_sum[sublayer] / (n_samples * sums.n_units),
            "norm_mean": norm_mean[sublayer], "norm_sem": norm_sem[sublayer],
            "density": density[sublayer],
            "distinct_states": int(sums.state_labels[sublayer].max()) + 1,
        })
    for transition in range(n_sublayers - 1):
        rows.append({
            "condition": condition, "kind": "transition", "index": transition,
            "name": f"{names[transition]}->{names[transition + 1]}", "layer": transition // 2,
            "transition_type": transition_type(transition),
            "cosine_mean": cosine_mean[transition], "cosine_sem": cosine_sem[transition],
            "velocity_mean": velocity_mean[transition], "velocity_sem": velocity_sem[transition],
        })
    return rows


def layer_stats_from_arrays(
    activations: Mapping[str, np.ndarray], density_threshold: float, names: list[str] | None = None
) -> pd.DataFrame:
    """The layer-statistics table of in-memory activations {condition: (N, 2L, D)}."""
    rows = []
    for condition, acts in activations.items():
        acts = np.asarray(acts, dtype=np.float64)
        _check_block(acts, 0, condition)
        sums = LayerSums(*acts.shape)
        sums.add(acts, 0)
        rows += rows_from_sums(sums, condition, names or default_sublayer_names(acts.shape[1] // 2), density_threshold)
    return pd.DataFrame(rows, columns=COLUMNS)


def _check_block(block: np.ndarray, unit_start: int, condition: str) -> None:
    n_samples, n_sublayers, n_units = block.shape
    unit_range = f"units {unit_start}-{unit_start + n_units - 1}"
    if n_samples < MIN_SAMPLES:
        raise UnitStatsInputError(
            f"activations '{condition}' has {n_samples} samples; layer_stats needs at least {MIN_SAMPLES}."
        )
    if n_sublayers < 2:
        raise UnitStatsInputError(f"activations '{condition}' has {n_sublayers} sublayer(s); layer_stats needs at least 2.")
    if not np.isfinite(block).all():
        sample, sublayer, unit = np.argwhere(~np.isfinite(block))[0]
        raise UnitStatsInputError(
            f"activations '{condition}' has NaN or inf values in {unit_range} (first: unit "
            f"{unit + unit_start}, sublayer {sublayer}, sample {sample}); every activation must be finite."
        )


def _unit_blocks(array, condition: str):
    """Yield (unit_start, float64 block (N, S, chunk)) over the unit chunks of ``array``."""
    step = array.chunks[2]
    for start in tqdm(range(0, array.shape[2], step), desc=f"layer_stats {condition}", unit="chunk"):
        yield start, np.asarray(array[:, :, start : start + step], dtype=np.float64)


def layer_stats(store_path: str | Path, density_threshold: float) -> pd.DataFrame:
    """The layer-statistics table of ``activations.zarr``, read one unit chunk at a time.

    A first pass checks every chunk (finite values, enough samples) before any compute.
    """
    group = open_group(store_path)
    for condition in CONDITIONS:
        if condition not in group:
            raise UnitStatsInputError(f"{store_path} has no array '{condition}'; expected {', '.join(CONDITIONS)}.")
    for condition in CONDITIONS:
        for start, block in _unit_blocks(group[condition], condition):
            _check_block(block, start, condition)
    rows = []
    for condition in CONDITIONS:
        array = group[condition]
        n_samples, n_sublayers, n_units = array.shape
        names = list(group.attrs.get("sublayer_names") or default_sublayer_names(n_sublayers // 2))
        sums = LayerSums(n_samples, n_sublayers, n_units)
        for start, block in _unit_blocks(array, condition):
            sums.add(block, start)
        rows += rows_from_sums(sums, condition, names, density_threshold)
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- summary


def _row(value, paper, definition: str) -> dict:
    value = None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value
    return {"value": value, "paper": paper, "definition": definition}


def _by_type(values: np.ndarray, kind: str) -> np.ndarray:
    start = 0 if kind == "within" else 1
    return values[start::2]


def _paired_within_cross(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer l: (value of 2l -> 2l+1, value of 2l+1 -> 2l+2), for layers with both."""
    within, cross = values[0::2], values[1::2]
    n = min(len(within), len(cross))
    return within[:n], cross[:n]


def _within_cross_rows(
    name: str,
    within_mean: float,
    cross_mean: float,
    within_per_layer: np.ndarray,
    cross_per_layer: np.ndarray,
    depth_spearman: float,
    depth_paper: str,
    definitions: tuple[str, str, str, str],
) -> dict[str, dict]:
    """The four rows ``{name}_within_mean``, ``_cross_mean``, ``_within_gt_cross_fraction`` and
    ``_depth_spearman`` of one quantity (r or cosine) with their definitions."""
    within_def, cross_def, fraction_def, spearman_def = definitions
    return {
        f"{name}_within_mean": _row(within_mean, "within > cross", within_def),
        f"{name}_cross_mean": _row(cross_mean, "within > cross", cross_def),
        f"{name}_within_gt_cross_fraction": _row(float(np.mean(within_per_layer > cross_per_layer)), 1.0, fraction_def),
        f"{name}_depth_spearman": _row(depth_spearman, depth_paper, spearman_def),
    }


def _thirds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    third = max(1, len(values) // 3)
    return values[:third], values[-third:]


def _per_row_of_finite(values: np.ndarray, statistic) -> np.ndarray:
    """``statistic`` of each row's finite entries: (T, U) -> (T,), NaN for a row with none."""
    return np.array([statistic(row[np.isfinite(row)]) if np.isfinite(row).any() else np.nan for row in values])


def first_defined_transition(values: np.ndarray) -> int:
    """Index of the first transition (row) at which at least half of the units are finite.

    A transition is undefined for a unit whose source sublayer is constant across
    samples, e.g. sublayer 0 when every sample ends with the same token.
    """
    defined = np.isfinite(values).mean(axis=1) >= 0.5
    return int(np.argmax(defined)) if defined.any() else 0


def _condition_rows(stats: Mapping, suffix: str) -> dict[str, dict]:
    """Rows computed the same way for either condition (``suffix`` '' or '_shuffled')."""
    which = "token-shuffled" if suffix else "original"
    r = stats["corr_consecutive"]
    first = first_defined_transition(r)
    median_r = _per_row_of_finite(r, np.median)
    rows = {
        f"first_defined_transition{suffix}": _row(
            first, 0, f"first transition where r is defined for at least half of the units ({which} text); "
            "0 unless sublayer 0 is constant across samples (every sample ends with the same token)"),
        f"corr_first_transition_median{suffix}": _row(
            float(median_r[first]), "> 0.8",
            f"median over units of Pearson r (across samples) at the first defined transition ({which} text)"),
        f"corr_first_transition_fraction_above_0.8{suffix}": _row(
            float(np.mean(r[first] > 0.8)), "most units", f"fraction of units with r > 0.8 at that transition ({which} text)"),
        f"corr_last_transition_median{suffix}": _row(
            float(median_r[-1]), "higher than early", f"median over units of r between the last two sublayers ({which} text)"),
    }
    for estimator, label in (("mi_kde", "Gaussian KDE, the paper's estimator"), ("mi_ksg", "KSG"), ("mi_gaussian", "-0.5 ln(1 - r^2)")):
        values = stats[estimator]
        mean_mi = _per_row_of_finite(values, np.mean)
        after = np.where(np.arange(len(mean_mi)) >= first, np.nan_to_num(mean_mi, nan=np.inf), np.inf)
        rows[f"{estimator}_first{suffix}"] = _row(
            float(mean_mi[first]), "high, then a sharp drop" if estimator == "mi_kde" else None,
            f"mean over units of the MI ({label}, nats) at the first defined transition ({which} text)")
        rows[f"{estimator}_min{suffix}"] = _row(
            float(np.min(after)), None,
            f"minimum over transitions (from the first defined one) of the mean over units of the MI ({label}, nats; {which} text)")
        rows[f"{estimator}_argmin_transition{suffix}"] = _row(
            int(np.argmin(after)), "one of the first few", f"transition index of that minimum ({label}; {which} text)")
    return rows


def summary_fig12(unit_stats: Mapping, layer_table: pd.DataFrame) -> dict[str, dict]:
    """The Fig. 1-2 rows of the headline table: {name: {value, paper, definition}}.

    ``unit_stats`` is ``read_group(unit_stats.zarr)``; ``layer_table`` the
    ``layer_stats.csv`` table. Values are for the original condition unless the name
    ends in ``_shuffled`` (the token-shuffled control).
    """
    from scipy.stats import spearmanr

    original, shuffled = unit_stats["original"], unit_stats["shuffled"]
    r = original["corr_consecutive"]
    first = first_defined_transition(r)
    median_r = _per_row_of_finite(r, np.median)
    mean_r = _per_row_of_finite(r, np.mean)
    within_r, cross_r = _paired_within_cross(mean_r)
    defined_layers = np.isfinite(within_r) & np.isfinite(cross_r)
    transitions = layer_table[(layer_table["kind"] == "transition") & (layer_table["condition"] == "original")].sort_values("index")
    cosine = transitions["cosine_mean"].to_numpy()
    velocity = transitions["velocity_mean"].to_numpy()
    within_cos, cross_cos = _paired_within_cross(cosine)
    early_v, late_v = _thirds(velocity)
    depth = np.arange(len(median_r))
    rows: dict[str, dict] = {}
    rows.update(_condition_rows(original, ""))
    rows.update(_condition_rows(shuffled, "_shuffled"))
    rows.update(_within_cross_rows(
        "corr", float(np.nanmean(_by_type(r, "within"))), float(np.nanmean(_by_type(r, "cross"))),
        within_r[defined_layers], cross_r[defined_layers],
        float(spearmanr(depth[first:], median_r[first:], nan_policy="omit")[0]), "> 0 (r increases with depth)",
        ("mean over units and layers of r for within-layer transitions (pre-attn -> pre-MLP)",
         "mean over units and layers of r for cross-layer transitions (pre-MLP -> next pre-attn)",
         "fraction of layers l (with both transitions defined) whose mean r over units is higher for 2l -> 2l+1 than for 2l+1 -> 2l+2",
         "Spearman correlation between transition index and median r over units, from the first defined transition"),
    ))
    rows.update(_within_cross_rows(
        "cosine", float(np.mean(_by_type(cosine, "within"))), float(np.mean(_by_type(cosine, "cross"))),
        within_cos, cross_cos,
        float(spearmanr(np.arange(len(cosine)), cosine)[0]), "> 0 (increases with depth)",
        ("mean over within-layer transitions of the mean (over samples) cosine similarity of consecutive RS vectors",
         "the same for cross-layer transitions",
         "fraction of layers whose within-layer cosine exceeds their cross-layer cosine",
         "Spearman correlation between transition index and mean cosine similarity"),
    ))
    rows["velocity_late_early_ratio"] = _row(
        float(late_v.mean() / early_v.mean()), "> 1 (steepest rise in the last third)",
        "mean velocity ||h_{l+1} - h_l|| over the last third of transitions / over the first third")
    rows["velocity_cross_within_ratio"] = _row(
        float(np.mean(_by_type(velocity, "cross")) / np.mean(_by_type(velocity, "within"))), "> 1 (cross faster)",
        "mean velocity of cross-layer transitions / mean velocity of within-layer transitions")
    rotations = original["rotations"]
    rows["rotations_mean"] = _row(
        float(np.mean(rotations)), 10.74,
        "mean over units of the signed rotation number R of the unit's sample-mean phase portrait "
        "(PAPER.md Fig. 2; < 0 = clockwise, the sense in which any oscillation of (a, da/dl) turns)")
    rows["rotations_abs_mean"] = _row(float(np.mean(np.abs(rotations))), None, "mean over units of |R|")
    rows["rotations_null_mean"] = _row(
        float(np.mean(original["rotations_null_mean"])), "about 0",
        "mean over units of the mean R of the layer-shuffle null (sublayer order permuted n_shuffles times)")
    rows["rotations_surrogate_mean"] = _row(
        float(np.mean(original["rotations_surrogate_mean"])), None,
        "mean over units of the mean R of the smooth surrogate null (unit_stats.surrogate)")
    rows["rotations_mean_shuffled"] = _row(
        float(np.mean(shuffled["rotations"])), "about 0",
        "mean R over units in the token-shuffled condition")
    for null, label in (("null", "layer-shuffle null"), ("surrogate", "surrogate null")):
        percentile = original[f"rotations_{null}_percentile"]
        rows[f"rotations_fraction_below_{null}_2.5"] = _row(
            float(np.mean(percentile < 2.5)), None,
            f"fraction of units whose R lies below the 2.5th percentile of their own {label} (more clockwise turns than chance)")
        rows[f"rotations_fraction_above_{null}_97.5"] = _row(
            float(np.mean(percentile > 97.5)), None,
            f"fraction of units whose R lies above the 97.5th percentile of their own {label} (fewer clockwise turns than chance)")
        rows[f"rotations_fraction_beyond_{null}_95"] = _row(
            float(np.mean((percentile < 2.5) | (percentile > 97.5))), None,
            f"fraction of units whose R lies outside the central 95% of their own {label} (two-sided)")
    return rows
