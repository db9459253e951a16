"""Fig. 1 quantities recomputed on bootstrap resamples of the sequences.

A resample draws N sequences with replacement; it is represented by its count weights
``w`` (B, N) (how often each sequence was drawn), so that every resampled mean is one
matrix product ``w @ values / N``, vectorised over resamples, sublayers and units.

Per resample and condition, streamed one unit chunk of ``activations.zarr`` at a time:

- ``r`` (B, T, D) float32: Pearson r of each unit between sublayers t and t + 1 over the
  resampled sequences (NaN where a unit is constant across them);
- ``density`` (B, S): fraction of units whose |mean activation| over the resampled
  sequences exceeds the density threshold (Fig. 1B density);
- ``norm``, ``cosine``, ``velocity`` (B, S) / (B, T): the mean over resampled sequences of
  each sequence's RS norm, cosine similarity and velocity ||h_{t+1} - h_t|| (Fig. 1B, E, F).

Row 0 of every returned array is the full sample (all weights 1), the point estimate;
``n_samples`` is N.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rsdyn.core.resampling import counts, with_observed
from rsdyn.core.store import open_group


def count_weights(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``range(n)`` is drawn in each resample: (B, n) int indices -> (B, n)
    float64 (:func:`rsdyn.core.resampling.counts`)."""
    return counts(indices, n)


def weighted_moments(block: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted means (B, S, U), variances (B, S, U) and Pearson r between consecutive
    sublayers (B, S - 1, U) of ``block`` (N, S, U) float64 under count weights (B, N); r is
    NaN where a unit has zero weighted variance at either sublayer. With integer counts
    these are the moments of the resampled sequences."""
    n_samples, n_sublayers, n_units = block.shape
    total = weights.sum(axis=1)[:, None]
    shift = block.mean(axis=0)
    centred = block - shift  # an exact shift: keeps the moments well conditioned
    flat = centred.reshape(n_samples, -1)
    # the same arithmetic as the plain expressions, in place: these (B, S, U) passes, not
    # the products, bound the time
    mean = weights @ flat
    mean /= total
    mean = mean.reshape(-1, n_sublayers, n_units)
    variance = weights @ (flat * flat)
    variance /= total
    variance = variance.reshape(-1, n_sublayers, n_units)
    variance -= mean * mean
    np.maximum(variance, 0.0, out=variance)
    r = weights @ (centred[:, :-1] * centred[:, 1:]).reshape(n_samples, -1)
    r /= total
    r = r.reshape(-1, n_sublayers - 1, n_units)
    r -= mean[:, :-1] * mean[:, 1:]  # the covariance
    scale = variance[:, :-1] * variance[:, 1:]
    np.sqrt(scale, out=scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        r /= scale
    np.minimum(r, 1.0, out=r)  # np.clip, NaN kept
    np.maximum(r, -1.0, out=r)
    r[(variance[:, :-1] == 0) | (variance[:, 1:] == 0)] = np.nan
    mean += shift
    return mean, variance, r


def weighted_corr_consecutive(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson r between consecutive sublayers under each weighting of the samples:
    ``block`` (N, S, U), ``weights`` (B, N) counts -> (B, S - 1, U) (:func:`weighted_moments`)."""
    return weighted_moments(block, weights)[2]


def per_sequence_geometry(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial sums over the units of ``block`` (N, S, U): squared norm (N, S), dot product
    (N, T) and squared step (N, T) of consecutive sublayers."""
    return (
        np.square(block).sum(axis=2),
        (block[:, :-1] * block[:, 1:]).sum(axis=2),
        np.square(block[:, 1:] - block[:, :-1]).sum(axis=2),
    )


def resample_condition(
    array, weights: np.ndarray, density_threshold: float, unit_chunk: int | None = None
) -> dict[str, np.ndarray]:
    """Every resampled Fig. 1 quantity of one condition (an (N, S, D) array or zarr array).

    ``weights`` (B, N); the first row of each returned array is the full sample (all
    weights 1), the others follow ``weights``.
    """
    n_samples, n_sublayers, n_units = array.shape
    weights = with_observed(weights)
    step = unit_chunk or (array.chunks[2] if hasattr(array, "chunks") else n_units)
    r = np.empty((weights.shape[0], n_sublayers - 1, n_units), dtype=np.float32)
    active = np.zeros((weights.shape[0], n_sublayers))
    squared_norm = np.zeros((n_samples, n_sublayers))
    dot = np.zeros((n_samples, n_sublayers - 1))
    squared_step = np.zeros((n_samples, n_sublayers - 1))
    total = weights.sum(axis=1)[:, None, None]
    for start in range(0, n_units, step):
        block = np.asarray(array[:, :, start : start + step], dtype=np.float64)
        r[:, :, start : start + block.shape[2]] = weighted_corr_consecutive(block, weights)
        mean = (weights @ block.reshape(n_samples, -1)).reshape(-1, n_sublayers, block.shape[2]) / total
        active += (np.abs(mean) > density_threshold).sum(axis=2)
        parts = per_sequence_geometry(block)
        squared_norm += parts[0]
        dot += parts[1]
        squared_step += parts[2]
    norm = np.sqrt(squared_norm)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = dot / (norm[:, :-1] * norm[:, 1:])
    velocity = np.sqrt(squared_step)
    share = weights / weights.sum(axis=1, keepdims=True)
    return {
        "n_samples": np.int64(n_samples),
        "r": r,
        "density": active / n_units,
        "norm": share @ norm,
        "cosine": share @ cosine,
        "velocity": share @ velocity,
    }


def resample_store(
    store_path: str | Path,
    indices: np.ndarray,
    density_threshold: float,
    conditions: Sequence[str] = ("original", "shuffled"),
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`resample_condition` of each condition of ``activations.zarr`` with the same
    resampled sequences (``indices`` (B, N), paired across conditions: sequence i is the
    same text in both)."""
    group = open_group(store_path)
    out = {}
    for condition in conditions:
        array = group[condition]
        out[condition] = resample_condition(array, count_weights(indices, array.shape[0]), density_threshold)
    return out
