"""Resampling designs for the judged claims: what is drawn, and how it becomes weights.

Every design returns count weights, so that a weighted statistic (a weighted mean, a
weighted moment, a weighted kernel density) is one matrix product per resample:

- :func:`sequence_weights`: the ordinary bootstrap of N sequences (multinomial counts);
- :func:`cluster_weights`: a cluster bootstrap: whole clusters (e.g. all sequences that
  end with the same token) are drawn with replacement, each sequence weighted by how
  often its cluster was drawn, for statistics that rest on few distinct states;
- :func:`subsample_weights`: m-out-of-n subsampling without replacement (0/1 weights),
  for statistics whose value depends on N (a count of components, say), judged at a
  stated m;
- :func:`two_level_weights`: a group (training seed, initialisation) drawn with
  replacement, then the items (test sequences) within the design, for intervals that
  must hold the variance of training or initialisation as well as that of the data.

Seeds: each design draws from ``numpy.random.default_rng([seed, n, tag])`` with a tag per
design, so the same seed gives the same resamples, and two designs never share a stream.
"""

from __future__ import annotations

import numpy as np

_TAGS = {"sequences": 1, "clusters": 2, "subsample": 3, "groups": 4}


def _rng(seed: int, n: int, design: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(n), _TAGS[design]])


def _check(n: int, n_resamples: int) -> None:
    if n < 1:
        raise ValueError(f"a resampling design needs at least one item; got {n}.")
    if n_resamples < 1:
        raise ValueError(f"the number of resamples is {n_resamples}; it must be at least 1.")


def counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``range(n)`` appears in each row of ``indices`` (B, k): float64 (B, n)."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((indices.shape[0], n))
    rows = np.repeat(np.arange(indices.shape[0]), indices.shape[1])
    np.add.at(out, (rows, indices.reshape(-1)), 1.0)
    return out


def sequence_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap counts of ``n`` sequences: float64 (B, n), each row summing to n."""
    _check(n, n_resamples)
    return counts(_rng(seed, n, "sequences").integers(0, n, size=(n_resamples, n)), n)


def cluster_weights(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Cluster-bootstrap counts: the K distinct ``labels`` (one per sequence) are drawn K
    times with replacement and each sequence gets its cluster's count: float64 (B, n)."""
    labels = np.asarray(labels)
    _check(len(labels), n_resamples)
    clusters, inverse = np.unique(labels, return_inverse=True)
    drawn = counts(_rng(seed, len(labels), "clusters").integers(0, len(clusters), size=(n_resamples, len(clusters))), len(clusters))
    return drawn[:, inverse.reshape(-1)]


def subsample_weights(n: int, m: int, n_resamples: int, seed: int) -> np.ndarray:
    """m-out-of-n subsamples without replacement as 0/1 weights: float64 (B, n), m ones per row."""
    _check(n, n_resamples)
    if not 1 <= m <= n:
        raise ValueError(f"m-out-of-n subsampling needs 1 <= m <= n; got m = {m}, n = {n}.")
    rng = _rng(seed, n, "subsample")
    keys = rng.random((n_resamples, n))
    chosen = np.argpartition(keys, m - 1, axis=1)[:, :m]
    out = np.zeros((n_resamples, n))
    np.put_along_axis(out, chosen, 1.0, axis=1)
    return out


def two_level_weights(n_groups: int, n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups drawn with replacement (counts (B, n_groups)) and, independently, bootstrap
    counts of the ``n`` items (B, n): the weights of a two-level bootstrap whose statistic
    is a group-weighted mean of item-weighted statistics."""
    _check(n_groups, n_resamples)
    rng = _rng(seed, n_groups * 1_000_003 + n, "groups")
    groups = counts(rng.integers(0, n_groups, size=(n_resamples, n_groups)), n_groups)
    items = counts(rng.integers(0, n, size=(n_resamples, n)), n)
    return groups, items


def with_observed(weights: np.ndarray) -> np.ndarray:
    """``weights`` (B, n) with the data itself, all weights 1, as row 0: (B + 1, n)."""
    return np.vstack([np.ones((1, weights.shape[1])), weights])
