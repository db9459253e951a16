"""Fig. 1 rows of summary.json (density, continuity, cosine, velocity, mutual information).

Every row that compares two things (within vs cross, early vs late, a value against the
paper's threshold, the MI drop) carries a 95 % percentile bootstrap interval and a
verdict against the paper's stated direction (``rsdyn.core.verdicts``):

- r, cosine, velocity, norm, density and the Gaussian MI are recomputed on resampled
  sequences (``rsdyn.units.resample``; paired across conditions);
- the KDE and KSG MI are too expensive to recompute per resample: their rows resample
  units (the unit axis of the per-unit MI), which their ``resampled`` says.

"Early" and "late" are the first and last third of the transitions of one type (or of
all transitions), as in the paper's "steepest acceleration in the last third". A
transition rests on as many distinct states as the fewer of its two sublayers have
(``layer_stats.csv`` ``distinct_states``); a row at a transition with fewer than
``FEW_STATES`` states says so in its definition.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from rsdyn.core.verdicts import (
    bootstrap_indices,
    comparison_row,
    resampled_label,
    row,
    thirds,
)
from rsdyn.units.resample import count_weights

#: a transition whose sublayers take fewer distinct states than this is flagged
FEW_STATES = 50
#: the MI estimators of unit_stats.zarr, with a label; mi_kde_literal is a reference
MI_ESTIMATORS = {
    "mi_kde": "Gaussian KDE, the paper's estimator, resubstitution mean",
    "mi_ksg": "KSG",
    "mi_gaussian": "-0.5 ln(1 - r^2)",
    "mi_kde_literal": "the paper's written sum over the sample points, not normalised",
}
TYPES = {"within": 0, "cross": 1}
TYPE_WORDS = {"within": "within-layer (pre-attn -> pre-MLP)", "cross": "cross-layer (pre-MLP -> next pre-attn)"}


# --------------------------------------------------------------------------- statistics
# Each takes arrays with any leading axes (resamples) and reduces the trailing ones.


def nanmean_last(values: np.ndarray, axes=-1) -> np.ndarray:
    """Mean over ``axes`` of the finite entries (NaN where none)."""
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, values, 0.0).sum(axis=axes) / finite.sum(axis=axes)


def by_type(curve: np.ndarray, kind: str) -> np.ndarray:
    """The transitions of one type of curves over transitions (last axis)."""
    return curve[..., TYPES[kind] :: 2]


def units_by_type(r: np.ndarray, kind: str) -> np.ndarray:
    """The transitions of one type of per-unit values (..., T, D)."""
    return r[..., TYPES[kind] :: 2, :]


def spearman_last(values: np.ndarray, start: int = 0) -> np.ndarray:
    """Spearman correlation of each curve (last axis, from ``start``) with its index."""
    from scipy.stats import rankdata

    curve = values[..., start:]
    finite = np.isfinite(curve).all(axis=tuple(range(curve.ndim - 1))) if curve.ndim > 1 else np.isfinite(curve)
    curve = curve[..., finite]
    ranks = rankdata(curve, axis=-1)
    index = rankdata(np.arange(curve.shape[-1]))
    ranks = ranks - ranks.mean(axis=-1, keepdims=True)
    index = index - index.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks * index).sum(axis=-1) / np.sqrt((ranks * ranks).sum(axis=-1) * (index * index).sum())


def late_minus_early(curve: np.ndarray) -> np.ndarray:
    """Mean over the last third of a curve minus the mean over its first third."""
    early, late = thirds(curve.shape[-1])
    return nanmean_last(curve[..., late]) - nanmean_last(curve[..., early])


def late_over_early(curve: np.ndarray) -> np.ndarray:
    """Mean over the last third of a curve divided by the mean over its first third."""
    early, late = thirds(curve.shape[-1])
    return nanmean_last(curve[..., late]) / nanmean_last(curve[..., early])


def early_drop(curve: np.ndarray) -> np.ndarray:
    """First point of a curve minus the mean of the rest of its first third (>= 1 point)."""
    early, _ = thirds(curve.shape[-1])
    stop = max(2, early.stop)
    return curve[..., 0] - nanmean_last(curve[..., 1:stop])


def rise_after_drop(curve: np.ndarray) -> np.ndarray:
    """Mean over the last third of a curve minus the mean over its first third without its first point."""
    early, late = thirds(curve.shape[-1])
    return nanmean_last(curve[..., late]) - nanmean_last(curve[..., 1 : max(2, early.stop)])


def step_into_cross_minus_within(curve: np.ndarray) -> np.ndarray:
    """Over the first third of layers l: mean of curve[2l] - curve[2l+1] (the step down into a
    cross-layer transition) minus mean of curve[2l+1] - curve[2l+2] (down into a within-layer one)."""
    n_pairs = (curve.shape[-1] - 1) // 2  # layers with transitions 2l, 2l+1 and 2l+2
    early, _ = thirds(n_pairs)
    layers = np.arange(n_pairs)[early]
    into_cross = curve[..., 2 * layers] - curve[..., 2 * layers + 1]
    into_within = curve[..., 2 * layers + 1] - curve[..., 2 * layers + 2]
    return nanmean_last(into_cross) - nanmean_last(into_within)


def unit_mean_resamples(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over resampled units of each transition's finite values: (T, D), (B, D) -> (B, T)."""
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(finite, values, 0.0).T) / (weights @ finite.T.astype(np.float64))


def gaussian_mi(r: np.ndarray) -> np.ndarray:
    """-0.5 ln(1 - r^2) in float64 (inf where |r| = 1; those units drop out of the means)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -0.5 * np.log1p(-np.square(r.astype(np.float64)))


# --------------------------------------------------------------------------- rows


class RowMaker:
    """Builds rows whose interval comes from applying one statistic to the point data and to
    each resample; knows what was resampled."""

    def __init__(self, n_resamples: int, seed: int):
        self.n_resamples, self.seed = n_resamples, seed
        self.sequences = resampled_label("sequences, statistic recomputed on each resample", n_resamples, seed)
        self.units = resampled_label(
            "units (KDE/KSG MI is not recomputed on resampled sequences: too expensive)", n_resamples, seed
        )

    def compare(self, statistic: Callable, point, samples, paper, definition: str, expected: str, null: float,
                units: bool = False, judge: bool = True) -> dict:
        """A comparing row; with ``judge=False`` (no paper claim for this condition) the
        interval without ``expected`` and ``verdict``. A statistic that could only be
        resampled over units (``units``: the KDE and KSG MI, which vary over sequences) gets
        no interval at all: the judged MI claims resample sequences (rsdyn.units.mi_resample)."""
        value = float(statistic(point))
        if units:
            return row(value, paper, definition + "; no interval: an interval over units would leave out the sequences' "
                       "variation (the judged MI claims resample sequences)")
        out = comparison_row(value, paper, definition, np.asarray(statistic(samples), dtype=np.float64), expected,
                             self.units if units else self.sequences, null=null)
        if not judge:
            del out["expected"], out["verdict"]
        return out


def transition_states(distinct: np.ndarray, transition: int) -> int:
    """Distinct states a transition rests on: the fewer of its two sublayers'."""
    return int(min(distinct[transition], distinct[transition + 1]))


def states_note(distinct: np.ndarray, transition: int, n_samples: int) -> str:
    """The definition's note on how many distinct states a transition rests on."""
    states = transition_states(distinct, transition)
    weaker = transition if distinct[transition] <= distinct[transition + 1] else transition + 1
    note = f"; rests on {states} distinct states (of sublayer {weaker}) among {n_samples} sequences"
    if states < FEW_STATES:
        note += (f" - FEWER THAN {FEW_STATES}: a statistic over {states} atoms (sublayer 0 is the embedding of the "
                 "last token, the same for every sequence ending in the same token)")
    return note


def _distinct(layer_table: pd.DataFrame, condition: str) -> np.ndarray:
    rows = layer_table[(layer_table["kind"] == "sublayer") & (layer_table["condition"] == condition)].sort_values("index")
    if "distinct_states" not in rows:
        return np.full(len(rows), np.nan)
    return rows["distinct_states"].to_numpy()


def density_rows(resampled: Mapping, make: RowMaker) -> dict[str, dict]:
    """Fig. 1B: the RS grows (norm) and dense (fraction of active units) over depth."""
    norm, density = resampled["norm"], resampled["density"]
    return {
        "norm_late_over_early": make.compare(
            late_over_early, norm[0], norm[1:], "grows over the layers",
            "Fig. 1B: mean over sequences of the RS norm ||h_s||, averaged over the last third of sublayers, "
            "divided by the same over the first third", ">", 1.0),
        "density_late_minus_early": make.compare(
            late_minus_early, density[0], density[1:], "denser over the layers",
            "Fig. 1B: fraction of units whose |mean activation over sequences| exceeds layer_stats.density_threshold, "
            "mean over the last third of sublayers minus the first third", ">", 0.0),
    }


def correlation_rows(r_point: np.ndarray, r_samples: np.ndarray, distinct: np.ndarray, n_samples: int,
                     make: RowMaker, suffix: str = "", which: str = "original text") -> dict[str, dict]:
    """Fig. 1C: r at transitions 0 and 1 (against the paper's > 0.8), within vs cross, depth trend."""
    rows: dict[str, dict] = {}
    for sublayer in (0, 1):
        rows[f"distinct_states_sublayer_{sublayer}{suffix}"] = row(
            int(distinct[sublayer]) if np.isfinite(distinct[sublayer]) else None, None,
            f"number of distinct RS vectors at sublayer {sublayer} among the {n_samples} sequences ({which})")
    for t in (0, 1):
        note = states_note(distinct, t, n_samples) if np.isfinite(distinct[: t + 2]).all() else ""
        rows[f"corr_transition_{t}_median{suffix}"] = make.compare(
            lambda r, t=t: np.nanmedian(r[..., t, :], axis=-1), r_point, r_samples, None if suffix else "> 0.8",
            f"median over units of Pearson r (across sequences) between sublayers {t} and {t + 1} ({which}){note}",
            ">", 0.8, judge=not suffix)
        rows[f"corr_transition_{t}_fraction_above_0.8{suffix}"] = make.compare(
            lambda r, t=t: np.mean(r[..., t, :] > 0.8, axis=-1), r_point, r_samples, None if suffix else "most units",
            f"fraction of units with r > 0.8 between sublayers {t} and {t + 1} ({which}){note}; verdict against "
            "a majority (> 0.5)", ">", 0.5, judge=not suffix)
    rows[f"corr_mean_after_transition_1{suffix}"] = make.compare(
        lambda r: nanmean_last(r[..., 2:, :], (-2, -1)), r_point, r_samples, None,
        f"mean over units and transitions 2 .. end of r ({which}; beyond the last-token embedding and the layer-0 MLP)",
        ">", 0.0, judge=False)
    if suffix:
        return rows
    unit_mean = nanmean_last(r_point)  # (T,)
    within, cross = by_type(unit_mean, "within"), by_type(unit_mean, "cross")
    n = min(len(within), len(cross))
    rows["corr_within_mean"] = row(nanmean_last(units_by_type(r_point, "within"), (-2, -1)), "within > cross",
                                   "mean over units and layers of r for within-layer transitions (pre-attn -> pre-MLP)")
    rows["corr_cross_mean"] = row(nanmean_last(units_by_type(r_point, "cross"), (-2, -1)), "within > cross",
                                  "mean over units and layers of r for cross-layer transitions (pre-MLP -> next pre-attn)")

    def within_minus_cross(r):
        return nanmean_last(units_by_type(r, "within"), (-2, -1)) - nanmean_last(units_by_type(r, "cross"), (-2, -1))

    rows["corr_within_minus_cross"] = make.compare(
        within_minus_cross, r_point, r_samples, "within > cross",
        "corr_within_mean - corr_cross_mean (every transition, transition 0 included)", ">", 0.0)
    defined = np.isfinite(within[:n]) & np.isfinite(cross[:n])
    rows["corr_within_gt_cross_fraction"] = row(
        float(np.mean(within[:n][defined] > cross[:n][defined])), 1.0,
        "fraction of layers l (with both transitions defined) whose mean r over units is higher for 2l -> 2l+1 than for 2l+1 -> 2l+2")
    for kind in TYPES:
        rows[f"corr_{kind}_late_minus_early"] = make.compare(
            lambda r, kind=kind: late_minus_early(by_type(nanmean_last(r), kind)), r_point, r_samples,
            "increases over the layers (both types)",
            f"mean over units of r of {TYPE_WORDS[kind]} transitions, mean over the last third of layers minus the first third",
            ">", 0.0)
    first = int(np.argmax(np.isfinite(np.nanmedian(r_point, axis=-1)))) if np.isfinite(r_point).any() else 0
    rows["corr_depth_spearman"] = make.compare(
        lambda r: spearman_last(np.nanmedian(r, axis=-1), first), r_point, r_samples, "> 0 (r increases with depth)",
        "Spearman correlation between transition index and median r over units (from the first defined transition)",
        ">", 0.0)
    return rows


def geometry_rows(resampled: Mapping, make: RowMaker) -> dict[str, dict]:
    """Fig. 1E, F: cosine similarity and velocity of consecutive RS vectors."""
    cosine, velocity = resampled["cosine"], resampled["velocity"]
    point, samples = cosine[0], cosine[1:]
    rows = {
        "cosine_within_mean": row(float(np.mean(by_type(point, "within"))), "within > cross",
                                  "mean over within-layer transitions of the mean (over sequences) cosine similarity of consecutive RS vectors"),
        "cosine_cross_mean": row(float(np.mean(by_type(point, "cross"))), "within > cross", "the same for cross-layer transitions"),
    }
    rows["cosine_within_minus_cross"] = make.compare(
        lambda c: by_type(c, "within").mean(axis=-1) - by_type(c, "cross").mean(axis=-1), point, samples,
        "within > cross", "cosine_within_mean - cosine_cross_mean", ">", 0.0)
    n = min(len(by_type(point, "within")), len(by_type(point, "cross")))
    rows["cosine_within_gt_cross_fraction"] = row(
        float(np.mean(by_type(point, "within")[:n] > by_type(point, "cross")[:n])), 1.0,
        "fraction of layers whose within-layer cosine exceeds their cross-layer cosine")
    rows["cosine_depth_spearman"] = make.compare(
        spearman_last, point, samples, "> 0 (increases with depth)",
        "Spearman correlation between transition index and mean cosine similarity", ">", 0.0)
    point, samples = velocity[0], velocity[1:]
    rows["velocity_late_early_ratio"] = make.compare(
        late_over_early, point, samples, "> 1 (steepest rise in the last third)",
        "mean velocity ||h_{t+1} - h_t|| (over sequences) over the last third of transitions / over the first third",
        ">", 1.0)
    for kind in TYPES:
        rows[f"velocity_{kind}_late_early_ratio"] = make.compare(
            lambda v, kind=kind: late_over_early(by_type(v, kind)), point, samples, "> 1 (holds for both types)",
            f"the same ratio over {TYPE_WORDS[kind]} transitions only (thirds of their layers)", ">", 1.0)
    rows["velocity_cross_within_ratio"] = make.compare(
        lambda v: by_type(v, "cross").mean(axis=-1) / by_type(v, "within").mean(axis=-1), point, samples,
        "> 1 (cross faster)", "mean velocity of cross-layer transitions / mean velocity of within-layer transitions",
        ">", 1.0)
    return rows


def mi_rows(stats: Mapping, r_samples: np.ndarray, distinct: np.ndarray, n_samples: int, make: RowMaker,
            unit_weights: np.ndarray, suffix: str = "", which: str = "original text") -> dict[str, dict]:
    """Fig. 1G/H: MI per estimator at transitions 0 and 1 and the paper's "sharp decline in
    early layers, steepest at cross-layer transitions" under its plausible readings:

    - the interleaved curve (H as drawn): the first step t0 -> t1 (into the first
      cross-layer transition) and t0 against the rest of the first third;
    - each type's own curve (as E and F are drawn): its layer-0 value against the rest
      of its first third, and cross against within;
    - the steps of the interleaved curve over the first third: down into cross-layer
      transitions against down into within-layer ones;

    and the later "slow growth for cross-layer transitions". ``mi_kde_literal`` rows are
    a reference (no verdict): the written sum is not an MI estimate.
    """
    rows: dict[str, dict] = {}
    for estimator, label in MI_ESTIMATORS.items():
        if estimator not in stats:
            continue
        values = stats[estimator]
        point = nanmean_last(values)  # (T,)
        if estimator == "mi_gaussian":
            samples, units = nanmean_last(gaussian_mi(r_samples)), False
        else:
            samples, units = unit_mean_resamples(values, unit_weights), True
        reference = estimator == "mi_kde_literal"
        judge = not (reference or suffix)
        unit = "nats x density units" if reference else "nats"
        notes = {t: states_note(distinct, t, n_samples) if np.isfinite(distinct[: t + 2]).all() else "" for t in (0, 1)}

        def compare(name, statistic, paper, definition, judged=judge):
            rows[f"{estimator}_{name}{suffix}"] = make.compare(
                statistic, point, samples, paper if judged else None, definition, ">", 0.0, units=units, judge=judged)

        for t in (0, 1):
            rows[f"{estimator}_transition_{t}{suffix}"] = row(
                float(point[t]), "high, then a sharp drop" if estimator == "mi_kde" and t == 0 and not suffix else None,
                f"mean over units of the MI ({label}; {unit}) between sublayers {t} and {t + 1} ({which}){notes[t]}")
        rows[f"{estimator}_mean_after_transition_1{suffix}"] = make.compare(
            lambda m: nanmean_last(m[..., 2:]), point, samples, None,
            f"mean over units and transitions 2 .. end of the MI ({label}; {unit}; {which})", ">", 0.0,
            units=units, judge=False)
        compare("first_step_drop", lambda m: m[..., 0] - m[..., 1], "sharp drop in the first transitions",
                f"{estimator}_transition_0 - {estimator}_transition_1: the first step of the interleaved curve, into the "
                f"first cross-layer transition ({which}; transition 0{notes[0]})")
        if suffix:
            continue
        compare("early_drop", early_drop, "sharp drop in the early layers",
                f"mean MI over units ({label}) at transition 0 minus its mean over the rest of the first third of "
                f"transitions, interleaved curve (transition 0{notes[0]})")
        for kind in TYPES:
            note = notes[TYPES[kind]]
            compare(f"{kind}_early_drop", lambda m, kind=kind: early_drop(by_type(m, kind)), "sharp drop in the early layers",
                    f"mean MI over units ({label}) of the {TYPE_WORDS[kind]} transition of layer 0 minus its mean over "
                    f"the same type's transitions of the rest of the first third of layers (first point: transition "
                    f"{TYPES[kind]}{note})")
        compare("cross_minus_within_early_drop",
                lambda m: early_drop(by_type(m, "cross")) - early_drop(by_type(m, "within")),
                "steepest drops at cross-layer transitions",
                f"{estimator}_cross_early_drop - {estimator}_within_early_drop (each type's own curve; read it beside "
                "them: when both are negative, neither type drops)")
        compare("early_step_into_cross_minus_within", step_into_cross_minus_within,
                "steepest drops at cross-layer transitions",
                f"over the layers l of the first third, mean of the step down into the cross-layer transition, "
                f"MI(2l) - MI(2l+1), minus mean of the step down into the next within-layer one, MI(2l+1) - MI(2l+2) "
                f"({label}; interleaved curve; > 0 when MI dips at cross-layer transitions)")
        compare("cross_rise_after_drop", lambda m: rise_after_drop(by_type(m, "cross")),
                "slow growth for cross-layer transitions",
                f"mean MI over units ({label}) of cross-layer transitions over the last third of layers minus over the "
                "first third without layer 0")
    return rows


def summary_fig1(
    unit_stats: Mapping,
    layer_table: pd.DataFrame,
    resampled: Mapping,
    n_resamples: int,
    seed: int,
) -> dict[str, dict]:
    """The Fig. 1 rows of the headline table.

    ``unit_stats`` is ``read_group(unit_stats.zarr)``, ``layer_table`` the
    ``layer_stats.csv`` table, ``resampled`` :func:`rsdyn.units.resample.resample_store` of
    ``activations.zarr`` with ``bootstrap_indices(N, n_resamples, seed)``. Rows ending in
    ``_shuffled`` are the token-shuffled control (as configured: all positions, or all
    but the last token with ``corpus.shuffle_keep_last``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN transitions (a constant sublayer)
        return _summary_fig1(unit_stats, layer_table, resampled, n_resamples, seed)


def add_caveats(rows: dict[str, dict]) -> dict[str, dict]:
    """Give every row whose definition flags fewer than ``FEW_STATES`` states a short
    ``caveat`` ("rests on 20 distinct states"), shown beside the value in the tables, and
    drop its interval: resampling sequences that share a few states gives intervals far too
    narrow (the judged claims that rest on them resample whole clusters of sequences)."""
    for row_ in rows.values():
        found = re.search(r"rests on (\d+) distinct states[^;]*FEWER THAN", row_.get("definition", ""))
        if found:
            row_["caveat"] = f"rests on {found.group(1)} distinct states"
            for key in ("interval", "level", "resampled", "expected", "verdict"):
                row_.pop(key, None)
    return rows


def _summary_fig1(unit_stats, layer_table, resampled, n_resamples, seed) -> dict[str, dict]:
    make = RowMaker(n_resamples, seed)
    original = unit_stats["original"]
    n_units = original["corr_consecutive"].shape[1]
    unit_weights = count_weights(bootstrap_indices(n_units, n_resamples, seed), n_units)
    rows: dict[str, dict] = {}
    r_point = original["corr_consecutive"]
    first = int(np.argmax(np.isfinite(r_point).mean(axis=1) >= 0.5)) if (np.isfinite(r_point).mean(axis=1) >= 0.5).any() else 0
    rows["first_defined_transition"] = row(
        first, 0, "first transition where r is defined for at least half of the units (original text); 0 unless "
        "sublayer 0 is constant across sequences (every sequence ends with the same token)")
    rows.update(density_rows(resampled["original"], make))
    for condition, suffix, which in (("original", "", "original text"), ("shuffled", "_shuffled", "token-shuffled text")):
        stats = unit_stats[condition]
        distinct = _distinct(layer_table, condition)
        r_samples = resampled[condition]["r"][1:]
        n_samples = int(resampled[condition]["n_samples"])
        rows.update(correlation_rows(stats["corr_consecutive"], r_samples, distinct, n_samples, make, suffix, which))
        if not suffix:
            rows.update(geometry_rows(resampled["original"], make))
        rows.update(mi_rows(stats, r_samples, distinct, n_samples, make, unit_weights, suffix, which))
    return add_caveats(rows)
