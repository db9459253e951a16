"""Rotation number R of single units (paper §2.6, Fig. 2) and its per-unit nulls.

R is the signed number of turns of the tangent of the phase portrait
``(a_l - a_0, g_l - g_0)`` of a unit's trajectory a over sublayers, with
``g = np.gradient(a)``; angle changes are wrapped to [-pi, pi) and summed.

Four nulls, each ``n_shuffles`` seeded draws shared by every unit (so the numbers do
not depend on how the units are sharded):

- ``point_shuffle``: the portrait's points (x_l, y_l) permuted after the gradient. A
  permutation and its reverse are equally likely and reversing a path flips the sign
  of R, so this null has mean 0 whatever the data: the paper's "about 0" control. Its
  draws come in such pairs (draw 2i + 1 is draw 2i reversed), so the stored null mean
  is 0 up to round-off rather than up to sampling error.
- ``increment_shuffle``: the walk a_0 + cumsum of the unit's own increments
  a_{l+1} - a_l in random order: same steps, no order.
- ``layer_shuffle``: the activations a_l in random sublayer order (the paper's words).
- ``phase`` (or ``circular``, ``unit_stats.surrogate``): smooth surrogates of
  ``rsdyn.units.surrogates``.

Each null gives per unit its mean, std, 2.5/97.5 % quantiles, the percentile of R and a
two-sided p-value; ``bh_significant`` is the Benjamini-Hochberg step-up rule over units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numba
import numpy as np

from rsdyn.core.errors import UnitStatsInputError
from rsdyn.units.surrogates import SURROGATES, surrogate_trajectories

#: the nulls computed by permutation, in the order they are reported
PERMUTATION_NULLS = ("point_shuffle", "increment_shuffle", "layer_shuffle")

#: every null name a unit_stats store may hold
ALL_NULLS = PERMUTATION_NULLS + SURROGATES

#: a separate random stream per null (the first element of the seed sequence is the seed)
_STREAM = {"layer_shuffle": 0, "phase": 1, "circular": 1, "point_shuffle": 2, "increment_shuffle": 3}

#: the mode argument of ``_permuted_rotation_numbers`` for each permutation null
_KERNEL_MODE = {"layer_shuffle": 0, "point_shuffle": 1, "increment_shuffle": 2}

#: surrogate values held at once (8 bytes each): bounds the memory of the smooth nulls
_SURROGATE_BLOCK = 4_000_000


def null_names(surrogate: str = "phase") -> tuple[str, ...]:
    """The four nulls of a run whose smooth surrogate is ``surrogate``."""
    if surrogate not in SURROGATES:
        raise UnitStatsInputError(f"unit_stats.surrogate = {surrogate!r}; allowed values are {', '.join(map(repr, SURROGATES))}.")
    return PERMUTATION_NULLS + (surrogate,)


def stored_nulls(stats: Mapping, prefix: str = "rotations") -> tuple[str, ...]:
    """The nulls present in one condition of a unit_stats store, in reporting order."""
    return tuple(name for name in ALL_NULLS if f"{prefix}_{name}_mean" in stats)


# --------------------------------------------------------------------------- R


def phase_portrait(trajectory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phase portrait over sublayers (last axis): x = a - a_0, y = g - g_0, g = np.gradient(a)."""
    gradient = np.gradient(trajectory, axis=-1)
    return trajectory - trajectory[..., :1], gradient - gradient[..., :1]


def tangent_turns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed turns of the tangent of the curve (x_l, y_l) along the last axis.

    Tangent angles theta_l = atan2(y_{l+1} - y_l, x_{l+1} - x_l); their changes are
    wrapped to [-pi, pi), summed and divided by 2 pi. Positive = counter-clockwise.
    """
    theta = np.arctan2(np.diff(y, axis=-1), np.diff(x, axis=-1))
    turn = np.diff(theta, axis=-1)
    wrapped = np.mod(turn + np.pi, 2.0 * np.pi) - np.pi
    return wrapped.sum(axis=-1) / (2.0 * np.pi)


def rotation_number(trajectory: np.ndarray) -> np.ndarray:
    """R of PAPER.md Fig. 2: tangent turns of each trajectory's phase portrait, (..., n) -> (...).

    The portrait of a over sublayers (last axis) is x = a - a_0, y = g - g_0 with
    g = np.gradient(a); an oscillation of a runs clockwise in it, so R < 0.
    Computed by a fused kernel; ``tangent_turns(*phase_portrait(a))`` is the same in NumPy.
    """
    trajectory = np.asarray(trajectory, dtype=np.float64)
    if trajectory.shape[-1] < 2:
        raise UnitStatsInputError(f"the rotation number needs at least 2 sublayers; got {trajectory.shape[-1]}.")
    flat = np.ascontiguousarray(trajectory.reshape(-1, trajectory.shape[-1]))
    return _rotation_numbers(flat).reshape(trajectory.shape[:-1])


@numba.njit(cache=True, nogil=True)
def _gradient(a, g):
    """np.gradient(a) with unit spacing and first-order edges, into g."""
    n = a.shape[0]
    g[0] = a[1] - a[0]
    for l in range(1, n - 1):
        g[l] = (a[l + 1] - a[l - 1]) / 2.0
    g[n - 1] = a[n - 1] - a[n - 2]


@numba.njit(cache=True, nogil=True)
def _upper(dx, dy):
    """Whether atan2(dy, dx) lies in (0, pi] (else in (-pi, 0])."""
    return dy > 0.0 or (dy == 0.0 and dx < 0.0)


@numba.njit(cache=True, nogil=True)
def _turns(x, y):
    """Tangent turns of the curve (x_l, y_l): wrapped angle changes / 2 pi.

    The sum of the wrapped changes telescopes to theta_last - theta_first - 2 pi W,
    where W counts the changes that wrapped: theta_{l+1} - theta_l >= pi (from (-pi, 0]
    to (0, pi] with cross product <= 0) minus those < -pi (from (0, pi] to (-pi, 0] with
    cross product > 0). Two atan2 per curve instead of one per step; the same numbers as
    ``tangent_turns`` up to round-off (and up to exactly antiparallel steps, which both
    resolve to -pi but whose cross product may round differently).
    """
    n = x.shape[0]
    if n < 3:
        return 0.0
    ax, ay = x[1] - x[0], y[1] - y[0]
    first = np.arctan2(ay, ax)
    wraps = 0
    for l in range(1, n - 1):
        bx, by = x[l + 1] - x[l], y[l + 1] - y[l]
        cross = ax * by - ay * bx
        a_upper, b_upper = _upper(ax, ay), _upper(bx, by)
        if b_upper and not a_upper and cross <= 0.0:
            wraps += 1
        elif a_upper and not b_upper and cross > 0.0:
            wraps -= 1
        ax, ay = bx, by
    return (np.arctan2(ay, ax) - first - 2.0 * np.pi * wraps) / (2.0 * np.pi)


@numba.njit(cache=True, nogil=True)
def _rotation_numbers(trajectories):
    """R of each row of (M, n) trajectories."""
    m, n = trajectories.shape
    out = np.empty(m)
    g = np.empty(n)
    for row in range(m):
        _gradient(trajectories[row], g)
        out[row] = _turns(trajectories[row], g)
    return out


@numba.njit(cache=True, nogil=True)
def _permuted_rotation_numbers(trajectories, index, mode):
    """R of every unit (rows of (U, n)) under every draw (rows of ``index``), (K, U).

    mode 0 (layer shuffle): a[index]; mode 1 (point shuffle): the portrait points
    (a, g)[index]; mode 2 (increment shuffle): a_0 + cumsum(diff(a)[index]).
    """
    n_units, n = trajectories.shape
    n_draws = index.shape[0]
    out = np.empty((n_draws, n_units))
    a = np.empty(n)
    g = np.empty(n)
    x = np.empty(n)
    y = np.empty(n)
    for unit in range(n_units):
        source = trajectories[unit]
        if mode == 1:
            _gradient(source, g)
        for draw in range(n_draws):
            if mode == 0:
                for l in range(n):
                    a[l] = source[index[draw, l]]
                _gradient(a, y)
                out[draw, unit] = _turns(a, y)
            elif mode == 1:
                for l in range(n):
                    x[l] = source[index[draw, l]]
                    y[l] = g[index[draw, l]]
                out[draw, unit] = _turns(x, y)
            else:
                a[0] = source[0]
                for l in range(n - 1):
                    step = index[draw, l]
                    a[l + 1] = a[l] + (source[step + 1] - source[step])
                _gradient(a, y)
                out[draw, unit] = _turns(a, y)
    return out


# --------------------------------------------------------------------------- null draws


def _permutations(length: int, n_draws: int, seed: int, stream: int) -> np.ndarray:
    rng = np.random.default_rng([seed, stream])
    return np.argsort(rng.random((n_draws, length)), axis=1)


def layer_permutations(n_sublayers: int, n_shuffles: int, seed: int) -> np.ndarray:
    """``n_shuffles`` seeded permutations of the sublayer order, (n_shuffles, n)."""
    return _permutations(n_sublayers, n_shuffles, seed, _STREAM["layer_shuffle"])


def null_draws(null: str, n_sublayers: int, n_draws: int, seed: int) -> np.ndarray:
    """The index draws of a permutation null: sublayer order (layer, point shuffle,
    (K, n)) or increment order (increment shuffle, (K, n - 1)). The first k draws of
    a longer request are the same k draws (for the point shuffle's reversed pairs: for
    even k)."""
    if null not in PERMUTATION_NULLS:
        raise ValueError(f"{null!r} is not a permutation null; allowed: {', '.join(PERMUTATION_NULLS)}.")
    length = n_sublayers - 1 if null == "increment_shuffle" else n_sublayers
    if null == "point_shuffle":  # antithetic pairs: a permutation, then its reverse
        draws = _permutations(length, (n_draws + 1) // 2, seed, _STREAM[null])
        return np.stack([draws, draws[:, ::-1]], axis=1).reshape(-1, length)[:n_draws]
    return _permutations(length, n_draws, seed, _STREAM[null])


def null_rotations(trajectories: np.ndarray, null: str, n_draws: int, seed: int) -> np.ndarray:
    """R of every trajectory (U, n) under ``n_draws`` seeded draws of ``null``: (K, U) float64."""
    trajectories = np.ascontiguousarray(trajectories, dtype=np.float64)
    n_sublayers = trajectories.shape[1]
    if null in PERMUTATION_NULLS:
        index = np.ascontiguousarray(null_draws(null, n_sublayers, n_draws, seed), dtype=np.int64)
        return _permuted_rotation_numbers(trajectories, index, _KERNEL_MODE[null])
    if null in SURROGATES:
        out = np.empty((n_draws, trajectories.shape[0]))
        chunk = max(1, _SURROGATE_BLOCK // trajectories.size)
        for start in range(0, n_draws, chunk):
            stop = min(n_draws, start + chunk)
            draws = surrogate_trajectories(trajectories, null, n_draws, seed, draws=slice(start, stop))
            out[start:stop] = rotation_number(draws).T
        return out
    raise UnitStatsInputError(f"unknown rotation null {null!r}; allowed: {', '.join(ALL_NULLS)}.")


# --------------------------------------------------------------------------- per-unit tests


def two_sided_pvalue(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Equal-tailed permutation p-value of each unit's R against its null (K, U).

    p = min(1, 2 min(1 + #{null <= R}, 1 + #{null >= R}) / (K + 1)): never 0, exact
    under the null for exchangeable draws.
    """
    n_draws = null.shape[0]
    low = 1 + (null <= observed).sum(axis=0)
    high = 1 + (null >= observed).sum(axis=0)
    return np.minimum(1.0, 2.0 * np.minimum(low, high) / (n_draws + 1))


def null_summary(observed: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, 2.5/97.5 % quantiles of a null (n_null, U), each unit's percentile and p-value.

    Percentile = 100 x (#null < R + 0.5 #null == R) / n_null; p-value: ``two_sided_pvalue``.
    """
    below = (null < observed).sum(axis=0)
    equal = (null == observed).sum(axis=0)
    return {
        "mean": null.mean(axis=0),
        "std": null.std(axis=0, ddof=1) if null.shape[0] > 1 else np.zeros(null.shape[1]),
        "q025": np.quantile(null, 0.025, axis=0),
        "q975": np.quantile(null, 0.975, axis=0),
        "percentile": 100.0 * (below + 0.5 * equal) / null.shape[0],
        "pvalue": two_sided_pvalue(observed, null),
    }


def bh_significant(pvalues: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg step-up rule: which p-values are discoveries at FDR ``q``.

    With p sorted ascending, the largest rank i (1-based) with p_(i) <= i q / m
    and every p-value at or below p_(i) are discoveries. NaN p-values are never
    discoveries and do not count in m.
    """
    pvalues = np.asarray(pvalues, dtype=np.float64)
    finite = np.isfinite(pvalues)
    significant = np.zeros(pvalues.shape, dtype=bool)
    tested = pvalues[finite]
    if tested.size == 0:
        return significant
    ordered = np.sort(tested)
    passing = np.flatnonzero(ordered <= q * np.arange(1, tested.size + 1) / tested.size)
    if passing.size:
        significant[finite] = tested <= ordered[passing[-1]]
    return significant


class RotationKernels(NamedTuple):
    """The two kernels :func:`rotations` runs: R of trajectories (M, n) -> (M,), and R
    under the seeded draws of a null, ``(trajectories, null, n_draws, seed)`` -> (K, M)."""

    rotation_number: Callable[[np.ndarray], np.ndarray]
    null_rotations: Callable[[np.ndarray, str, int, int], np.ndarray]


def rotations(
    acts: np.ndarray,
    n_shuffles: int = 1000,
    surrogate: str = "phase",
    seed: int = 0,
    per_sample: bool = False,
    per_sample_shuffles: int = 100,
    kernels: RotationKernels | None = None,
) -> dict[str, np.ndarray]:
    """Rotation numbers of each unit's sample-mean trajectory against the four nulls.

    (N, S, U) -> ``rotations`` (U,) and, for each null of ``null_names(surrogate)``,
    ``rotations_<null>_{mean,std,q025,q975,percentile,pvalue}`` (U,) and
    ``rotations_<null>_samples`` (n_shuffles, U) float32. With ``per_sample``:
    ``rotations_per_sample_mean`` (U,), the mean over samples of each sample's R, and
    its nulls ``rotations_per_sample_<null>_*`` from ``per_sample_shuffles`` draws, each
    draw applied to every sample (the first draws of the sample-mean nulls).
    ``kernels``: where R is computed (default: the numba kernels of this module;
    :func:`rsdyn.units.batched.rotation_kernels` on a GPU).
    """
    kernels = kernels or NUMBA_KERNELS
    mean_trajectory = np.ascontiguousarray(acts.mean(axis=0).T)  # (U, S)
    observed = kernels.rotation_number(mean_trajectory)
    out = {"rotations": observed}
    for null in null_names(surrogate):
        draws = kernels.null_rotations(mean_trajectory, null, n_shuffles, seed)
        for name, value in null_summary(observed, draws).items():
            out[f"rotations_{null}_{name}"] = value
        out[f"rotations_{null}_samples"] = draws.astype(np.float32)
    if per_sample:
        out.update(per_sample_rotations(acts, per_sample_shuffles, surrogate, seed, kernels))
    return out


def per_sample_rotations(acts: np.ndarray, n_draws: int, surrogate: str = "phase", seed: int = 0,
                         kernels: RotationKernels | None = None) -> dict[str, np.ndarray]:
    """Mean over samples of each sample's R per unit, and its four nulls (see ``rotations``)."""
    kernels = kernels or NUMBA_KERNELS
    n_samples, n_sublayers, n_units = acts.shape
    trajectories = np.ascontiguousarray(acts.transpose(2, 0, 1).reshape(n_units * n_samples, n_sublayers), dtype=np.float64)
    observed = kernels.rotation_number(trajectories).reshape(n_units, n_samples).mean(axis=1)
    out = {"rotations_per_sample_mean": observed}
    for null in null_names(surrogate):
        draws = kernels.null_rotations(trajectories, null, n_draws, seed).reshape(n_draws, n_units, n_samples).mean(axis=2)
        for name, value in null_summary(observed, draws).items():
            out[f"rotations_per_sample_{null}_{name}"] = value
        out[f"rotations_per_sample_{null}_samples"] = draws.astype(np.float32)
    return out


#: the CPU kernels (the numbers of unit_stats.device: cpu)
NUMBA_KERNELS = RotationKernels(rotation_number, null_rotations)


def fdr_arrays(stats: Mapping, q: float = 0.05) -> dict[str, np.ndarray]:
    """``rotations[_per_sample]_<null>_fdr`` (U,) bool: BH discoveries at ``q`` over all
    units of one condition of a gathered unit_stats store."""
    out = {}
    for prefix in ("rotations", "rotations_per_sample"):
        for null in stored_nulls(stats, prefix):
            out[f"{prefix}_{null}_fdr"] = bh_significant(np.asarray(stats[f"{prefix}_{null}_pvalue"]), q)
    return out
