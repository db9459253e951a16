"""The units stage's judged statistics (Fig. 1 and the single-unit rotations of Fig. 2),
recomputed from ``activations.zarr`` under any weighting of the sequences.

Each statistic is a function of the sequences, so its resamples draw sequences (or, for
those resting on the last token's embedding, whole clusters of sequences that end with
the same token: :func:`rsdyn.core.resampling.cluster_weights`). One pass over the store,
one unit chunk at a time, computes every statistic for every resample at once: weighted
means, moments and Pearson r are matrix products of the count weights ``w`` (B, N).

Definitions (``original`` condition; S = 2L sublayers, T = S - 1 transitions; "early"
and "late" are the first and last third; a transition whose sublayers take fewer than
``FEW_STATES`` distinct states among the sequences is left out of every "over depth"
statistic and said so):

- ``norm_log_ratio``: log(mean RS norm over the late sublayers / over the early ones);
- ``density_relative_late_minus_early``: per sublayer, the fraction of units whose |mean
  activation| exceeds ``RELATIVE_DENSITY`` x the sublayer's RMS activation; late minus
  early;
- ``sign_persistence``: the fraction of (unit, transition) pairs whose mean activation
  keeps its sign;
- ``corr_earliest_min_median``: the smaller of the unit-median r of transitions 0 and 1
  (the earliest layer);
- ``corr_within_minus_cross_min``: the minimum over layers of mean-over-units r of the
  layer's within-layer transition minus its cross-layer one;
- ``corr_depth_trend_min_type``: the smaller over the two transition types of the
  Spearman correlation between layer and mean-over-units r;
- ``corr_strong_unit_fraction``: the fraction of units whose median r over transitions
  exceeds 0.8;
- ``cosine_depth_spearman``; ``cosine_within_minus_cross``: mean over layers;
- ``velocity_early_log_change``: log(mean velocity over the second half of the early
  transitions / over the first half);
- ``velocity_late_acceleration_min_type``: per type, the mean step of the per-layer
  velocity over the late layers minus that over the earlier two thirds, over the type's
  mean velocity; the smaller of the two types;
- ``velocity_cross_over_within_min``: min over layers of log(v_cross / v_within);
- ``rotation_excess_over_random_walk``: mean over units of |R| of the sample-mean
  trajectory minus the mean over units of the increment-shuffle (random-walk) null's
  mean |R| (the null held at its value on the full data);
- ``rotation_beyond_null_fraction``: the fraction of units whose R lies outside the
  central 95 % of its increment-shuffle null;
- ``rotation_spiral_out_fraction``: the fraction of units whose phase-portrait radius is
  larger over the late sublayers than over the early ones;
- ``mi_kde_early_drop`` and ``mi_kde_cross_rise``: see :mod:`rsdyn.units.mi_resample`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.core.resampling import cluster_weights, sequence_weights, with_observed
from rsdyn.core.verdicts import thirds
from rsdyn.units.resample import weighted_moments
from rsdyn.units.rotations import phase_portrait, rotation_number

#: transitions resting on fewer distinct states than this are left out of depth statistics
FEW_STATES = 50
#: the density threshold relative to each sublayer's RMS activation
RELATIVE_DENSITY = 0.1
#: the strong-correlation threshold of Fig. 1D ("r > 0.8")
STRONG_R = 0.8
#: the increment-shuffle null of R (the random walk with the unit's own steps)
RANDOM_WALK_NULL = "increment_shuffle"

STATISTICS = (
    "norm_log_ratio", "density_relative_late_minus_early", "sign_persistence", "corr_earliest_min_median",
    "corr_within_minus_cross_min", "corr_depth_trend_min_type", "corr_strong_unit_fraction", "cosine_depth_spearman",
    "cosine_within_minus_cross", "velocity_early_log_change", "velocity_late_acceleration_min_type",
    "velocity_cross_over_within_min", "rotation_excess_over_random_walk", "rotation_beyond_null_fraction",
    "rotation_spiral_out_fraction",
)
#: the resampling units these statistics support
UNITS = ("sequences", "last_token")


def spearman(values: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``values`` (..., n) with its index (ties averaged)."""
    from scipy.stats import rankdata

    ranks = rankdata(values, axis=-1)
    index = np.arange(values.shape[-1], dtype=np.float64)
    ranks = ranks - ranks.mean(axis=-1, keepdims=True)
    index = index - index.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks * index).sum(axis=-1) / np.sqrt((ranks * ranks).sum(axis=-1) * (index * index).sum())


def last_tokens(ids: np.ndarray, pad: int = -1) -> np.ndarray:
    """The last real token of each row of a right-padded id matrix (N, max_len) -> (N,)."""
    ids = np.asarray(ids)
    lengths = (ids != pad).sum(axis=1)
    return ids[np.arange(len(ids)), np.maximum(lengths - 1, 0)]


def fast_nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` along ``axis``, through ``np.median`` (a partition) when nothing is
    NaN, which is the common case and several times faster."""
    import warnings

    if not np.isnan(values).any():
        return np.median(values, axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _min_or_nan(values: np.ndarray) -> np.ndarray:
    """Row minimum of (B, k), NaN for an empty k or a row with a NaN."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], np.nan)
    return values.min(axis=1)


class _Accumulator:
    """Per-resample sums over the units of one condition, filled one unit chunk at a time."""

    def __init__(self, n_weights: int, n_sublayers: int, n_units: int):
        s, t = n_sublayers, n_sublayers - 1
        self.r_sum = np.zeros((n_weights, t))
        self.r_count = np.zeros((n_weights, t))
        self.r_earliest = [np.empty((n_weights, n_units), np.float32) for _ in range(2)]
        self.strong = np.zeros(n_weights)
        self.square_mean = np.zeros((n_weights, s))
        self.active_abs_mean: list[np.ndarray] = []
        self.sign_kept = np.zeros(n_weights)
        self.rotation_abs = np.zeros(n_weights)
        self.rotation_beyond = np.zeros(n_weights)
        self.spiral_out = np.zeros(n_weights)


class UnitsClaims:
    """The units stage's judged statistics of one capture (module docstring).

    ``array``: the ``original`` (N, S, D) array of ``activations.zarr`` (or any array);
    ``last_token``: the last token id of each sequence (for the cluster bootstrap);
    ``distinct``: distinct states per sublayer (``layer_stats.csv``); ``random_walk_null``:
    the increment-shuffle null draws of R (n_draws, D) from ``unit_stats.zarr``;
    ``mi``: an optional :class:`rsdyn.units.mi_resample.MIClaims` for the MI statistics.
    """

    def __init__(self, array, last_token: np.ndarray, distinct: np.ndarray, random_walk_null: np.ndarray | None = None,
                 mi=None, unit_chunk: int | None = None):
        self.array = array
        self.n_samples, self.n_sublayers, self.n_units = array.shape
        self.last_token = np.asarray(last_token)
        self.distinct = np.asarray(distinct, dtype=np.float64)
        self.unit_chunk = unit_chunk or (array.chunks[2] if hasattr(array, "chunks") else self.n_units)
        self.mi = mi
        self.null_abs = None
        self.null_q = None
        if random_walk_null is not None:
            draws = np.asarray(random_walk_null, dtype=np.float64)
            self.null_abs = np.abs(draws).mean(axis=0)
            self.null_q = np.percentile(draws, [2.5, 97.5], axis=0)
        threshold = min(FEW_STATES, max(2, self.n_samples // 2))  # a small corpus: half its sequences
        rich = np.isfinite(self.distinct) & (self.distinct >= threshold)
        transitions = np.arange(self.n_sublayers - 1)
        self.rich_transition = rich[transitions] & rich[transitions + 1] if len(rich) == self.n_sublayers else np.ones(len(transitions), bool)
        self.poor_transitions = [int(t) for t in transitions[~self.rich_transition]]

    def statistics(self) -> tuple[str, ...]:
        names = STATISTICS if self.null_abs is not None else tuple(s for s in STATISTICS if not s.startswith("rotation_"))
        return names + (self.mi.statistics() if self.mi is not None else ())

    def weights(self, unit: str, n_resamples: int, seed: int) -> np.ndarray:
        if unit == "sequences":
            return sequence_weights(self.n_samples, n_resamples, seed)
        if unit == "last_token":
            return cluster_weights(self.last_token, n_resamples, seed)
        raise ValueError(f"the units stage cannot resample {unit!r}; it resamples {', '.join(UNITS)}.")

    def describe(self, unit: str, n_resamples: int, seed: int) -> str:
        what = {"sequences": "sequences", "last_token": f"clusters of sequences with the same last token ({len(np.unique(self.last_token))} clusters)"}[unit]
        return f"{what} ({n_resamples} resamples, seed {seed}), statistic recomputed on each resample"

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        """Each statistic of ``names`` on the data and on ``n_resamples`` resamples of ``unit``."""
        weights = self.weights(unit, n_resamples, seed)
        own = [name for name in names if name in STATISTICS]
        values = self.evaluate(own, with_observed(weights)) if own else {}
        out = {name: Estimate(float(v[0]), v[1:], self.describe(unit, n_resamples, seed), self._extra(name)) for name, v in values.items()}
        mi_names = [name for name in names if name not in STATISTICS]
        if mi_names:
            if self.mi is None:
                raise ValueError(f"no MI statistics were set up; cannot compute {mi_names}.")
            out.update(self.mi.estimate(mi_names, weights, self.describe(unit, n_resamples, seed)))
        return out

    def _extra(self, name: str) -> dict[str, Any]:
        if name.startswith(("corr_within", "corr_depth", "corr_strong")) and self.poor_transitions:
            return {"left_out_transitions": self.poor_transitions}
        return {}

    def evaluate(self, names: Sequence[str], weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every statistic of ``names`` for each row of count weights (B, N): (B,) each."""
        if set(names) <= {"corr_earliest_min_median"}:  # the cluster bootstrap's only statistic: layer 0 alone
            return {"corr_earliest_min_median": self._earliest(weights)}
        acc = _Accumulator(len(weights), self.n_sublayers, self.n_units)
        share = weights / weights.sum(axis=1, keepdims=True)
        squared_norm = np.zeros((self.n_samples, self.n_sublayers))
        dot = np.zeros((self.n_samples, self.n_sublayers - 1))
        squared_step = np.zeros((self.n_samples, self.n_sublayers - 1))
        means = []
        for start in range(0, self.n_units, self.unit_chunk):
            block = np.asarray(self.array[:, :, start : start + self.unit_chunk], dtype=np.float64)
            stop = start + block.shape[2]
            mean, variance, r = weighted_moments(block, weights)
            self._add_correlations(acc, r, start, stop)
            acc.square_mean += (mean * mean + variance).sum(axis=2)
            means.append(mean.astype(np.float32))
            acc.sign_kept += (np.sign(mean[:, :-1]) == np.sign(mean[:, 1:])).sum(axis=(1, 2))
            if self.null_abs is not None and any(n.startswith("rotation_") for n in names):
                self._add_rotations(acc, mean, start, stop)
            squared_norm += np.square(block).sum(axis=2)
            dot += (block[:, :-1] * block[:, 1:]).sum(axis=2)
            squared_step += np.square(block[:, 1:] - block[:, :-1]).sum(axis=2)
        norm = np.sqrt(squared_norm)
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = share @ (dot / (norm[:, :-1] * norm[:, 1:]))
        velocity = share @ np.sqrt(squared_step)
        unit_means = np.concatenate(means, axis=2)
        stats = self._finish(acc, share @ norm, cosine, velocity, unit_means)
        return {name: stats[name] for name in names}

    def _earliest(self, weights: np.ndarray) -> np.ndarray:
        """``corr_earliest_min_median`` from the first three sublayers only."""

        medians = [np.empty((len(weights), self.n_units)) for _ in range(2)]
        for start in range(0, self.n_units, self.unit_chunk):
            block = np.asarray(self.array[:, :3, start : start + self.unit_chunk], dtype=np.float64)
            r = weighted_moments(block, weights)[2]
            for t in (0, 1):
                medians[t][:, start : start + block.shape[2]] = r[:, t]
        return np.minimum(*(fast_nanmedian(m, axis=1) for m in medians))

    def _add_correlations(self, acc: _Accumulator, r: np.ndarray, start: int, stop: int) -> None:
        finite = np.isfinite(r)
        acc.r_sum += np.where(finite, r, 0.0).sum(axis=2)
        acc.r_count += finite.sum(axis=2)
        for t in (0, 1):
            acc.r_earliest[t][:, start:stop] = r[:, t]
        median = fast_nanmedian(r[:, self.rich_transition], axis=1)
        with np.errstate(invalid="ignore"):
            acc.strong += (median > STRONG_R).sum(axis=1)

    def _add_rotations(self, acc: _Accumulator, mean: np.ndarray, start: int, stop: int) -> None:
        trajectories = np.ascontiguousarray(mean.transpose(0, 2, 1))  # (B, U, S)
        rotations = rotation_number(trajectories)
        acc.rotation_abs += np.abs(rotations).sum(axis=1)
        low, high = self.null_q[0, start:stop], self.null_q[1, start:stop]
        acc.rotation_beyond += ((rotations < low) | (rotations > high)).sum(axis=1)
        x, y = phase_portrait(trajectories)
        radius = np.hypot(x, y)
        early, late = thirds(self.n_sublayers)
        acc.spiral_out += (radius[..., late].mean(axis=-1) > radius[..., early].mean(axis=-1)).sum(axis=1)

    def _finish(self, acc, norm, cosine, velocity, unit_means) -> dict[str, np.ndarray]:

        early, late = thirds(self.n_sublayers)
        out: dict[str, np.ndarray] = {}
        out["norm_log_ratio"] = np.log(norm[:, late].mean(axis=1) / norm[:, early].mean(axis=1))
        rms = np.sqrt(acc.square_mean / self.n_units)  # (B, S)
        density = (np.abs(unit_means) > RELATIVE_DENSITY * rms[:, :, None]).mean(axis=2)
        out["density_relative_late_minus_early"] = density[:, late].mean(axis=1) - density[:, early].mean(axis=1)
        out["sign_persistence"] = acc.sign_kept / (self.n_units * (self.n_sublayers - 1))
        earliest = [fast_nanmedian(acc.r_earliest[t], axis=1) for t in (0, 1)]
        out["corr_earliest_min_median"] = np.minimum(*earliest)
        with np.errstate(invalid="ignore", divide="ignore"):
            r_mean = acc.r_sum / acc.r_count  # (B, T)
        n_layers = self.n_sublayers // 2
        layers = np.arange(n_layers - 1)
        pairs = [l for l in layers if self.rich_transition[2 * l] and self.rich_transition[2 * l + 1]]
        pairs = np.asarray(pairs, dtype=np.int64)
        out["corr_within_minus_cross_min"] = _min_or_nan(r_mean[:, 2 * pairs] - r_mean[:, 2 * pairs + 1])
        trends = []
        for offset in (0, 1):
            kept = [l for l in range(n_layers) if 2 * l + offset < self.n_sublayers - 1 and self.rich_transition[2 * l + offset]]
            trends.append(spearman(r_mean[:, [2 * l + offset for l in kept]]))
        out["corr_depth_trend_min_type"] = np.minimum(*trends)
        out["corr_strong_unit_fraction"] = acc.strong / self.n_units
        out["cosine_depth_spearman"] = spearman(cosine)
        within, cross = cosine[:, 0::2], cosine[:, 1::2]
        k = min(within.shape[1], cross.shape[1])
        out["cosine_within_minus_cross"] = (within[:, :k] - cross[:, :k]).mean(axis=1)
        first_third = thirds(self.n_sublayers - 1)[0].stop
        half = max(1, first_third // 2)
        out["velocity_early_log_change"] = np.log(velocity[:, half:first_third].mean(axis=1) / velocity[:, :half].mean(axis=1))
        accelerations = []
        for offset in (0, 1):
            per_layer = velocity[:, offset::2]
            steps = np.diff(per_layer, axis=1) / per_layer.mean(axis=1, keepdims=True)
            cut = thirds(steps.shape[1])[1].start
            accelerations.append(steps[:, cut:].mean(axis=1) - steps[:, :cut].mean(axis=1))
        out["velocity_late_acceleration_min_type"] = np.minimum(*accelerations)
        k = min(velocity[:, 0::2].shape[1], velocity[:, 1::2].shape[1])
        out["velocity_cross_over_within_min"] = _min_or_nan(np.log(velocity[:, 1::2][:, :k] / velocity[:, 0::2][:, :k]))
        if self.null_abs is not None:
            out["rotation_excess_over_random_walk"] = acc.rotation_abs / self.n_units - self.null_abs.mean()
            out["rotation_beyond_null_fraction"] = acc.rotation_beyond / self.n_units
            out["rotation_spiral_out_fraction"] = acc.spiral_out / self.n_units
        return out


def units_claims(activations_path, unit_stats: Mapping | None, distinct: np.ndarray, mi_settings: Mapping | None = None) -> UnitsClaims:
    """:class:`UnitsClaims` of a run's stores: ``activations.zarr``'s original condition and
    ids, the random-walk null of ``unit_stats.zarr`` (``read_group``'s dict, or None) and
    ``distinct`` states per sublayer; ``mi_settings`` (``units``, ``seed``, ``eps``) adds
    the MI statistics."""
    from rsdyn.core.store import open_group
    from rsdyn.units.mi_resample import MIClaims

    group = open_group(activations_path)
    array = group["original"]
    null = None
    if unit_stats is not None:
        null = unit_stats["original"].get(f"rotations_{RANDOM_WALK_NULL}_samples")
    mi = MIClaims(array, **dict(mi_settings)) if mi_settings is not None else None
    return UnitsClaims(array, last_tokens(group["original_ids"][...]), distinct, null, mi)
