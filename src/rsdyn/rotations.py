"""Rotation number R of single units (paper §2.6, Fig. 2) and its per-unit nulls.

R is the signed number of turns of the tangent of the phase portrait
``(a_l - a_0, g_l - g_0)`` of a unit's trajectory a over sublayers, with
``g = np.gradient(a)``; angle changes are wrapped to [-pi, pi) and summed.
"""

from __future__ import annotations

import numpy as np

from rsdyn.surrogates import surrogate_trajectories


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
    """
    return tangent_turns(*phase_portrait(np.asarray(trajectory, dtype=np.float64)))


def layer_permutations(n_sublayers: int, n_shuffles: int, seed: int) -> np.ndarray:
    """``n_shuffles`` seeded permutations of the sublayer order, (n_shuffles, n)."""
    rng = np.random.default_rng([seed, 0])
    return np.argsort(rng.random((n_shuffles, n_sublayers)), axis=1)


def null_summary(observed: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, 2.5/97.5 % quantiles of a null (n_null, U) and each unit's percentile.

    Percentile = 100 x (#null < R + 0.5 #null == R) / n_null.
    """
    below = (null < observed).sum(axis=0)
    equal = (null == observed).sum(axis=0)
    return {
        "mean": null.mean(axis=0),
        "std": null.std(axis=0, ddof=1) if null.shape[0] > 1 else np.zeros(null.shape[1]),
        "q025": np.quantile(null, 0.025, axis=0),
        "q975": np.quantile(null, 0.975, axis=0),
        "percentile": 100.0 * (below + 0.5 * equal) / null.shape[0],
    }


def rotations(
    acts: np.ndarray,
    n_shuffles: int = 1000,
    surrogate: str = "phase",
    seed: int = 0,
    per_sample: bool = False,
) -> dict[str, np.ndarray]:
    """Rotation numbers of each unit's sample-mean trajectory and their two nulls.

    (N, S, U) -> ``rotations`` (U,), ``rotations_null*`` (layer-shuffle null:
    mean, std, q025, q975, percentile (U,), samples (n_shuffles, U) float32),
    ``rotations_surrogate*`` (the same for the surrogate null) and, with
    ``per_sample``, ``rotations_per_sample_mean`` (U,).
    """
    mean_trajectory = acts.mean(axis=0).T  # (U, S)
    observed = rotation_number(mean_trajectory)
    permutations = layer_permutations(mean_trajectory.shape[1], n_shuffles, seed)
    shuffled_null = rotation_number(mean_trajectory[:, permutations]).T  # (n_shuffles, U)
    surrogate_null = rotation_number(surrogate_trajectories(mean_trajectory, surrogate, n_shuffles, seed)).T
    out = {"rotations": observed}
    for prefix, null in (("rotations_null", shuffled_null), ("rotations_surrogate", surrogate_null)):
        for name, value in null_summary(observed, null).items():
            out[f"{prefix}_{name}"] = value
        out[f"{prefix}_samples"] = null.astype(np.float32)
    if per_sample:
        out["rotations_per_sample_mean"] = rotation_number(acts.transpose(0, 2, 1)).mean(axis=0)
    return out
