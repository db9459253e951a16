"""Statistics of ``jacobian.zarr`` as functions of its arrays and of resample weights.

Every group (``trained``, ``initial``, ``svd_matched``, ``norm_matched``) holds rows; row r
belongs to the sequence ``sequence[r]`` (a position in ``sample_indices``) and the draw
``draw[r]`` (the init seed's position in ``init_seeds`` for ``initial``, the surrogate draw,
0 for ``trained``). A resample draws the sequences with replacement (one draw shared by
every group, so that differences between groups are paired by sequence) and, within each
group, its draws (init seeds, surrogate draws) with replacement; a row's weight is its
sequence's count times its draw's count (:func:`row_weights`). A statistic of a group is the
weighted mean over its rows of a per-row value (:func:`weighted_mean`); the observed value
takes every weight 1.

The per-row values: :func:`early_minus_late` (first third of the transitions minus the last
third), :func:`log_early_over_late` (log of the ratio of the two thirds' means) and
:func:`final` (the last entry, e.g. the product after the last layer). :data:`STATISTICS`
names the three compared between the trained weights and each baseline (beyond the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsdyn.core.verdicts import thirds

GROUP_STREAMS = {"trained": 0, "initial": 1, "svd_matched": 2, "norm_matched": 3}


def early_minus_late(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` ``(rows, S)``: mean over the first third of the transitions minus the last third."""
    early, late = thirds(values.shape[1])
    return values[:, early].mean(axis=1) - values[:, late].mean(axis=1)


def log_early_over_late(values: np.ndarray) -> np.ndarray:
    """Per row of positive ``values`` ``(rows, S)``: log(mean over the first third / mean over the last third)."""
    early, late = thirds(values.shape[1])
    return np.log(values[:, early].mean(axis=1)) - np.log(values[:, late].mean(axis=1))


def final(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` ``(rows, n)``: the last entry."""
    return np.asarray(values)[:, -1]


def row_index(group: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(sequence, draw)`` of a group's rows (a group written without them: row r is
    sequence r, draw 0)."""
    rows = np.asarray(group["rotation_index"]).shape[0]
    sequence = np.asarray(group["sequence"], dtype=np.int64) if "sequence" in group else np.arange(rows)
    draw = np.asarray(group["draw"], dtype=np.int64) if "draw" in group else np.zeros(rows, dtype=np.int64)
    return sequence, draw


def counts(n: int, n_resamples: int, seed: int, stream: int = 0) -> np.ndarray:
    """Multinomial counts ``(n_resamples, n)`` of ``n`` draws with replacement from ``n`` items,
    seeded by ``(seed, n, stream)``."""
    picks = np.random.default_rng([seed, n, stream]).integers(0, n, size=(n_resamples, n))
    out = np.zeros((n_resamples, n), dtype=np.float64)
    np.add.at(out, (np.arange(n_resamples)[:, None], picks), 1.0)
    return out


@dataclass
class Resamples:
    """Counts of every resample: ``sequences`` ``(R, n)`` over the sequences, ``draws[group]``
    ``(R, k)`` over each group's draws."""

    sequences: np.ndarray
    draws: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return self.sequences.shape[0]


def resamples(arrays: Mapping[str, Any], n_resamples: int, seed: int) -> Resamples:
    """Seeded :class:`Resamples` of a ``jacobian.zarr``'s groups."""
    n_sequences = len(np.asarray(arrays["trained"]["rotation_index"]))
    if "sample_indices" in arrays:
        n_sequences = len(np.asarray(arrays["sample_indices"]))
    draws = {}
    for name, stream in GROUP_STREAMS.items():
        if name in arrays:
            n_draws = int(row_index(arrays[name])[1].max()) + 1
            draws[name] = counts(n_draws, n_resamples, seed, stream + 1)
    return Resamples(counts(n_sequences, n_resamples, seed, 0), draws)


def observed(arrays: Mapping[str, Any]) -> Resamples:
    """The one 'resample' that is the data: every count 1."""
    n_sequences = len(np.asarray(arrays.get("sample_indices", arrays["trained"]["rotation_index"])))
    draws = {name: np.ones((1, int(row_index(arrays[name])[1].max()) + 1)) for name in GROUP_STREAMS if name in arrays}
    return Resamples(np.ones((1, n_sequences)), draws)


def row_weights(name: str, group: Mapping[str, Any], resampled: Resamples) -> np.ndarray:
    """Weights ``(R, rows)`` of group ``name``'s rows in every resample."""
    sequence, draw = row_index(group)
    weights = resampled.sequences[:, sequence]
    if name in resampled.draws:
        weights = weights * resampled.draws[name][:, draw]
    return weights


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted means over rows: ``values`` ``(rows, ...)``, ``weights`` ``(R, rows)`` ->
    ``(R, ...)``; NaN where a resample gives the rows no weight."""
    values = np.asarray(values, dtype=np.float64)
    total = weights.sum(axis=1)
    flat = values.reshape(values.shape[0], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ flat) / total[:, None]
    return means.reshape((weights.shape[0], *values.shape[1:]))


def group_statistic(
    arrays: Mapping[str, Any], name: str, per_row: Callable[[Mapping[str, Any]], np.ndarray], resampled: Resamples
) -> np.ndarray:
    """``per_row(group)`` (one value per row) averaged with the weights of every resample: ``(R,)``."""
    group = arrays[name]
    return weighted_mean(per_row(group), row_weights(name, group, resampled))


#: the statistics compared between the trained weights and each baseline: per-row value of a group
STATISTICS: dict[str, tuple[Callable[[Mapping[str, Any]], np.ndarray], str]] = {
    "rotation_index_early_minus_late": (
        lambda group: early_minus_late(np.asarray(group["rotation_index"], dtype=np.float64)),
        "rotation index of J, mean over the first third of the transitions minus the last third",
    ),
    "update_norm_log_early_over_late": (
        lambda group: log_early_over_late(np.asarray(group["update_frobenius_norm"], dtype=np.float64)),
        "log of (mean ||J - I||_F over the first third of the transitions / mean over the last third)",
    ),
    "cumulative_rank_final": (
        lambda group: final(np.asarray(group["cumulative_effective_rank_entropy"], dtype=np.float64)),
        "effective rank (exp spectral entropy) of the whole product J_{2L-1} ... J_0",
    ),
}
