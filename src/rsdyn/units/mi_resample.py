"""The paper's Gaussian-KDE mutual information on resampled sequences, made affordable.

The judged MI statistics are means over units of the KDE MI (:mod:`rsdyn.units.mi`)
at some transitions. Recomputing a KDE per resample and unit is out of reach (B = 2000
resamples x D units x transitions), so the resampled MI is the *weighted resubstitution*
estimate: with the kernel matrices K (N x N) of the full data (the bandwidth of the
full sample held fixed), a resample with count weights w has densities
p(x_i) = sum_j w_j K_ij / (N h) at every sample point and MI = sum_i w_i log((p(x_i, y_i)
+ eps) / (p(x_i) p(y_i) + eps)) / N: one matrix product per kernel for all resamples.
With all weights 1 this is exactly the full-data estimate.

Units: a seeded subset of ``units`` units (the same for every resample) carries the
statistic, and the resamples draw the units of that subset with replacement as well as
the sequences, so the interval holds both the sequences' and the units' variation.

Statistics, both on the transitions 0 .. the end of the first third of the interleaved
curve (one set of weighted MIs feeds both):

- ``mi_kde_early_drop``: MI at transition 0 minus the mean MI over the rest of the first
  third ("a sharp decrease in mutual information during early layers");
- ``mi_kde_steepest_at_cross``: over the layers l of the first third, the mean step down
  into the cross-layer transition, MI(2l) - MI(2l + 1), minus the mean step down into the
  next within-layer one, MI(2l + 1) - MI(2l + 2) ("the steepest drops occurring at
  cross-layer transitions").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.core.resampling import sequence_weights, with_observed

STATISTICS = ("mi_kde_early_drop", "mi_kde_steepest_at_cross")


def marginal_kernel(x: np.ndarray) -> np.ndarray:
    """Gaussian kernel of a 1-D sample (Scott bandwidth), divided by its normaliser h sqrt(2 pi):
    float64 (N, N), so that ``K.mean(axis=1)`` is ``scipy.stats.gaussian_kde(x)(x)``."""
    n = len(x)
    std = np.std(x, ddof=1)
    if not std > 0:
        return np.full((n, n), np.nan)
    h = std * n ** (-1.0 / 5.0)
    z = (x[:, None] - x[None, :]) / h
    return np.exp(-0.5 * z * z) / (h * math.sqrt(2.0 * math.pi))


def joint_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gaussian kernel of a 2-D sample (Scott bandwidth, full covariance) divided by its
    normaliser: float64 (N, N); ``K.mean(axis=1)`` is ``gaussian_kde(vstack([x, y]))`` at the data."""
    n = len(x)
    covariance = np.cov(np.vstack([x, y])) * n ** (-2.0 / 6.0)
    try:
        chol = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        return np.full((n, n), np.nan)
    white = np.linalg.solve(chol, np.vstack([x, y]))  # (2, N)
    d0 = white[0][:, None] - white[0][None, :]
    d1 = white[1][:, None] - white[1][None, :]
    return np.exp(-0.5 * (d0 * d0 + d1 * d1)) / (2.0 * math.pi * np.prod(np.diag(chol)))


def weighted_mi(k_xy: np.ndarray, k_x: np.ndarray, k_y: np.ndarray, weights: np.ndarray, eps: float) -> np.ndarray:
    """Weighted-resubstitution KDE MI (nats) for each row of count weights (B, N): (B,).

    The density sums run in float32 (integer counts times kernels in (0, 1/h]: about 7
    significant digits, as the paper's estimator on the CPU); the logs and the mean in
    float64."""
    plan = WeightPlan(weights)
    return plan.mi(plan.density(k_xy), plan.density(k_x), plan.density(k_y), eps)


class WeightPlan:
    """Count weights (B, N) prepared for many kernel sums: sample points whose weights are
    equal in every resample (the sequences of one cluster in a cluster bootstrap) share
    one column, so a density sum_j w_j K_ij is the product of the B x C distinct weights
    with the kernel's columns summed within each such group (C <= N columns; exact in
    exact arithmetic, and C = N for an ordinary bootstrap)."""

    def __init__(self, weights: np.ndarray):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.total = self.weights.sum(axis=1, keepdims=True)
        _, first, inverse = np.unique(self.weights, axis=1, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        self.order = np.argsort(inverse, kind="stable")  # the sample points, group by group
        self.starts = np.flatnonzero(np.r_[True, np.diff(inverse[self.order]) != 0])
        self.grouped = self.weights[:, first].astype(np.float32)  # (B, C), group g = column g

    def density(self, kernel: np.ndarray) -> np.ndarray:
        """sum_j w_j K_ij / sum_j w_j for every resample and sample point i: float64 (B, N)."""
        summed = np.add.reduceat(kernel[:, self.order], self.starts, axis=1)  # (N, C), float64
        return (self.grouped @ summed.T.astype(np.float32)).astype(np.float64) / self.total

    def mi(self, p_xy: np.ndarray, p_x: np.ndarray, p_y: np.ndarray, eps: float) -> np.ndarray:
        """The weighted mean over sample points of log((p_xy + eps) / (p_x p_y + eps)): (B,)."""
        pointwise = np.log((p_xy + eps) / (p_x * p_y + eps))
        return (self.weights * pointwise).sum(axis=1) / self.total[:, 0]


def early_transitions(n_transitions: int) -> list[int]:
    """Transitions 0 .. the end of the first third (at least 0, 1 and 2)."""
    return list(range(min(n_transitions, max(3, n_transitions // 3))))


def statistic_of(name: str, mi: np.ndarray) -> np.ndarray:
    """A statistic of per-unit MIs ``mi`` (..., T_early) at :func:`early_transitions`."""
    if name == "mi_kde_early_drop":
        return mi[..., 0] - mi[..., 1:].mean(axis=-1)
    layers = np.arange((mi.shape[-1] - 1) // 2)
    into_cross = mi[..., 2 * layers] - mi[..., 2 * layers + 1]
    into_within = mi[..., 2 * layers + 1] - mi[..., 2 * layers + 2]
    return into_cross.mean(axis=-1) - into_within.mean(axis=-1)


class MIClaims:
    """The MI statistics of one (N, S, D) array on a seeded subset of ``units`` units."""

    def __init__(self, array, units: int = 32, seed: int = 0, eps: float = 1e-10):
        self.array = array
        self.n_samples, self.n_sublayers, n_units = array.shape
        self.units = np.sort(np.random.default_rng([int(seed), n_units]).choice(n_units, size=min(units, n_units), replace=False))
        self.seed, self.eps = int(seed), float(eps)
        self._cache: dict[int, np.ndarray] = {}

    def statistics(self) -> tuple[str, ...]:
        return STATISTICS

    def per_unit_mi(self, transitions: Sequence[int], weights: np.ndarray) -> np.ndarray:
        """Weighted MI of every selected unit at every transition: (B, k, len(transitions)).
        Each sublayer's marginal densities are computed once and serve both transitions
        that touch it."""
        plan = WeightPlan(weights)
        out = np.empty((len(weights), len(self.units), len(transitions)))
        for ui, unit in enumerate(self.units):
            trajectory = np.asarray(self.array[:, :, int(unit)], dtype=np.float64)  # (N, S)
            marginals: dict[int, np.ndarray] = {}
            for ti, t in enumerate(transitions):
                for s in (t, t + 1):
                    if s not in marginals:
                        marginals[s] = plan.density(marginal_kernel(trajectory[:, s]))
                joint = plan.density(joint_kernel(trajectory[:, t], trajectory[:, t + 1]))
                out[:, ui, ti] = plan.mi(joint, marginals[t], marginals[t + 1], self.eps)
                marginals.pop(t - 1, None)
        return out

    def estimate(self, names: Sequence[str], weights: np.ndarray, resampled: str) -> dict[str, Estimate]:
        """Each statistic on the data (all weights 1) and on the resamples ``weights`` (B, N),
        units of the subset resampled too (seeded by this subset's seed)."""
        unknown = [name for name in names if name not in STATISTICS]
        if unknown:
            raise ValueError(f"unknown MI statistics {unknown}; known: {', '.join(STATISTICS)}.")
        n_resamples = len(weights)
        all_weights = with_observed(weights)
        unit_weights = with_observed(sequence_weights(len(self.units), n_resamples, self.seed + 7919))
        transitions = early_transitions(self.n_sublayers - 1)
        mi = self.per_unit_mi(transitions, all_weights)  # (B + 1, k, T)
        out = {}
        for name in names:
            per_unit = statistic_of(name, mi)  # (B + 1, k)
            finite = np.isfinite(per_unit)
            with np.errstate(invalid="ignore", divide="ignore"):
                values = (unit_weights * np.where(finite, per_unit, 0.0)).sum(axis=1) / (unit_weights * finite).sum(axis=1)
            out[name] = Estimate(
                float(values[0]), values[1:],
                f"{resampled}; and the {len(self.units)} units of a seeded subset (seed {self.seed}) drawn with replacement",
                {"units": [int(u) for u in self.units], "transitions": [int(t) for t in transitions]},
            )
        return out
