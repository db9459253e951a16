"""Pearson correlations of each unit across samples between sublayers (Fig. 1C, 1D).

Every function takes activations ``(n_samples, n_sublayers, n_units)`` (float64) and
works on all units at once.
"""

from __future__ import annotations

import numpy as np


def _standardize(acts: np.ndarray) -> np.ndarray:
    """(N, S, U) -> centred and scaled so that sum over samples of z^2 = 1."""
    centred = acts - acts.mean(axis=0)
    norm = np.sqrt((centred * centred).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return centred / norm


def corr_consecutive(acts: np.ndarray) -> np.ndarray:
    """Pearson r across samples between sublayer l and l + 1: (N, S, U) -> (S - 1, U)."""
    z = _standardize(acts)
    return (z[:, :-1] * z[:, 1:]).sum(axis=0)


def corr_matrix(acts: np.ndarray) -> np.ndarray:
    """Pearson r between every pair of sublayers, per unit: (N, S, U) -> (U, S, S)."""
    z = np.ascontiguousarray(_standardize(acts).transpose(2, 1, 0))  # (U, S, N)
    n_sublayers = z.shape[1]
    out = np.empty((z.shape[0], n_sublayers, n_sublayers))
    for sublayer in range(n_sublayers):
        out[:, sublayer, :] = (z[:, sublayer : sublayer + 1, :] * z).sum(axis=-1)
    return out


def histogram_fractions(values: np.ndarray, bins: int) -> np.ndarray:
    """Per row, the fraction of values in each of ``bins`` equal bins of [0, 1].

    Bins are half-open except the last (as ``np.histogram``); values outside [0, 1]
    and NaN count in no bin but do count in the denominator. (R, M) -> (R, bins).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges, values, side="right") - 1
    index = np.where(values == 1.0, bins - 1, index)
    inside = (values >= 0.0) & (values <= 1.0)
    rows = np.broadcast_to(np.arange(values.shape[0])[:, None], values.shape)
    counts = np.zeros((values.shape[0], bins))
    np.add.at(counts, (rows[inside], index[inside]), 1.0)
    return counts / values.shape[1]


def corr_pairs_hist(acts: np.ndarray, bins: int) -> np.ndarray:
    """Per unit, fraction of sublayer pairs l < m with r in each bin of [0, 1]: (U, bins)."""
    matrix = corr_matrix(acts)
    upper = np.triu_indices(matrix.shape[1], k=1)
    return histogram_fractions(matrix[:, upper[0], upper[1]], bins)
