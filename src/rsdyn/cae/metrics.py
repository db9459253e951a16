"""The CAE's quantities of Fig. 3, pure array functions of the test states, their
reconstructions and their 2-D codes.

Explained variance per sublayer on the test set (Fig. 3D). The primary curve is the
paper's plain words read literally, with "variance" the variance of all entries of
sublayer s's test block X_s (n sequences x D units, one grand mean):
    EV_s = 1 - var(X_s - Y_s) / var(X_s)            (``ev_block_per_sublayer``)
Two references are kept (grey in Fig. 3D): the R^2 against each unit's own mean in the
sublayer, 1 - ||X_s - Y_s||^2 / ||X_s - mean(X_s)||^2 (``ev_per_sublayer``), which a 2-D
code trained on pooled states cannot beat (it stays near 0), and the same against the
pooled mean of all test states (``ev_per_sublayer_pooled_reference``). Step distances are
the Euclidean lengths of the consecutive steps of a 2-D trajectory."""

from __future__ import annotations

import numpy as np


def explained_variance_per_sublayer(states: np.ndarray, reconstruction: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """R^2 of each sublayer, for (n, S, D) inputs -> (S,).

    1 - ||X_s - Y_s||^2 / ||X_s - c_s||^2 with c_s the sublayer's own mean (default, a
    proper R^2), or a fixed (D,) ``reference`` such as the pooled mean of all states
    (then the denominator also holds the sublayer's offset from it). NaN where the
    denominator is zero.
    """
    states = np.asarray(states, dtype=np.float64)
    residual = np.sum((states - reconstruction) ** 2, axis=(0, 2))
    centre = states.mean(axis=0, keepdims=True) if reference is None else np.asarray(reference, dtype=np.float64)
    spread = np.sum((states - centre) ** 2, axis=(0, 2))
    return 1.0 - residual / np.where(spread > 0, spread, np.nan)


def step_distances(embedding: np.ndarray) -> np.ndarray:
    """Euclidean distance between successive sublayers of each trajectory: (n, S, 2) -> (n, S-1)."""
    return np.linalg.norm(np.diff(np.asarray(embedding, dtype=np.float64), axis=1), axis=-1)


def _pooled_variance(means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Variance over all entries of equal-sized groups with the given means and population
    variances (axis 0 = groups): mean variance + variance of the means."""
    grand = means.mean(axis=0)
    return variances.mean(axis=0) + ((means - grand) ** 2).mean(axis=0)


def ev_block_from_sequence_stats(stats: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Block-variance explained variance per sublayer, (2L,), from ``HeldOutStatistics``'
    per-sequence stats (n, 2L, 4), over the sequences ``rows`` (all by default, repeats
    allowed, as in a bootstrap resample): 1 - var(R_s) / var(X_s), var over every entry of
    the sublayer's block (sequences x units) about one grand mean. NaN where var(X_s) = 0."""
    stats = stats if rows is None else stats[np.asarray(rows)]
    var_x = _pooled_variance(stats[..., 0], stats[..., 1])
    var_r = _pooled_variance(stats[..., 2], stats[..., 3])
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - var_r / np.where(var_x > 0, var_x, np.nan)


def explained_variance_block(states: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Dense form of the block-variance explained variance: for (n, 2L, D) inputs, (2L,)
    1 - var(X_s - Y_s) / var(X_s), each var over all n x D entries of sublayer s (one
    grand mean). NaN where var(X_s) = 0."""
    x = np.asarray(states, dtype=np.float64)
    r = x - np.asarray(reconstruction, dtype=np.float64)
    var_x = x.var(axis=(0, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - r.var(axis=(0, 2)) / np.where(var_x > 0, var_x, np.nan)


NEGLIGIBLE_RELATIVE_VARIANCE = 1e-3  # of the mean sublayer variance; see sublayers_with_variance


def sublayers_with_variance(variance_per_sublayer: np.ndarray, relative: float = NEGLIGIBLE_RELATIVE_VARIANCE) -> np.ndarray:
    """(2L,) bool: sublayers whose variance across sequences is at least ``relative`` times
    the mean over sublayers. Below that (e.g. the embedding of a mostly shared last
    token) a per-sublayer R^2 against the sublayer's own mean divides a reconstruction
    error by almost nothing and says nothing about the sublayer's variation."""
    variance = np.asarray(variance_per_sublayer, dtype=np.float64)
    return variance >= relative * np.mean(variance)
