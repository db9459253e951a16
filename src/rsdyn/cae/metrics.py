"""The CAE's quantities of Fig. 3, pure array functions (NumPy, no I/O) of the test states,
their reconstructions and their 2-D codes, or of the per-seed, per-sequence arrays of
``cae/embedding.zarr`` (``rsdyn.cae.evaluate``).

Explained variance per sublayer on the test set (Fig. 3D):

- across sequences (``ev_across_sequences``, the CAE's judged reading): 1 - sum_i
  ||x_is - y_is||^2 / sum_i ||x_is - m_s||^2 with m_s the sublayer's training-set mean,
  so that predicting every state by its sublayer's training mean scores exactly 0 and
  only variation across sequences counts;
- the paper's plain words read literally (``ev_block``): 1 - var(X_s - Y_s) / var(X_s),
  "variance" the variance of all entries of sublayer s's test block X_s (n sequences x
  D units, one grand mean), which the per-unit offsets dominate;
- two grey references: the R^2 against each unit's own test mean in the sublayer
  (``ev_per_sublayer``) and against the pooled mean of all test states
  (``ev_per_sublayer_pooled_reference``).

Step distances are the Euclidean lengths of the consecutive steps of a 2-D trajectory."""

from __future__ import annotations

import warnings

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
    """Euclidean distance between successive sublayers of each trajectory: (..., n, S, 2) -> (..., n, S-1)."""
    return np.linalg.norm(np.diff(np.asarray(embedding, dtype=np.float64), axis=-2), axis=-1)


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


# --------------------------------------------------------------------------- statistics over seeds and sequences
#
# The functions below take the per-seed, per-test-sequence arrays of ``cae/embedding.zarr``
# (see ``rsdyn.cae.evaluate``), sequence ``weights`` and a choice of training ``seeds``,
# so that an interval can resample training seeds and test sequences together:
#
# - ``weights``: None (every test sequence once), (n,) or (R, n) non-negative weights,
#   e.g. bootstrap counts (a sequence drawn twice has weight 2);
# - ``seeds``: None (every training seed once), (k,) or (R, k) indices into the seed
#   axis, repeats allowed (a resample of seeds with replacement).
#
# A statistic is computed for each chosen seed and averaged over the choice (a seed
# drawn twice counts twice): the expected statistic of a trained CAE. With 2-D
# ``weights`` or ``seeds`` (R rows, broadcast against each other) the result gets a
# leading axis of R.


def sequence_weights(weights, n_sequences: int) -> np.ndarray:
    """float64 (R, n) weights: ones for None, a 1-D vector as one row."""
    if weights is None:
        return np.ones((1, n_sequences))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape[-1] != n_sequences:
        raise ValueError(f"{weights.shape[-1]} sequence weights for {n_sequences} test sequences.")
    return weights


def seed_fractions(seeds, n_seeds: int) -> np.ndarray:
    """float64 (R, S): the fraction of each resample's chosen seeds that are seed s (rows sum to 1)."""
    if seeds is None:
        return np.full((1, n_seeds), 1.0 / n_seeds)
    seeds = np.atleast_2d(np.asarray(seeds, dtype=np.int64))
    if seeds.size == 0 or seeds.min() < 0 or seeds.max() >= n_seeds:
        raise ValueError(f"seed indices must lie in [0, {n_seeds}); got {seeds.min() if seeds.size else 'none'}..{seeds.max() if seeds.size else ''}.")
    counts = np.zeros((len(seeds), n_seeds))
    np.add.at(counts, (np.arange(len(seeds))[:, None], seeds), 1.0)
    return counts / seeds.shape[1]


def _shape_out(result: np.ndarray, weights, seeds) -> np.ndarray:
    """Drop the resample axis when neither ``weights`` nor ``seeds`` was 2-D."""
    batched = (weights is not None and np.ndim(weights) == 2) or (seeds is not None and np.ndim(seeds) == 2)
    return result if batched else result[0]


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / np.where(denominator > 0, denominator, np.nan)


def ev_across_sequences(sse: np.ndarray, sst: np.ndarray, weights=None, seeds=None) -> np.ndarray:
    """Explained variance across test sequences per sublayer, (2L,) or (R, 2L):
    EV_s = 1 - sum_i w_i SSE_is / sum_i w_i SST_is, averaged over the chosen seeds.

    ``sse`` (S, n, 2L): squared reconstruction error of test sequence i at sublayer s,
    summed over units; ``sst`` (n, 2L): squared distance of the test state to the
    sublayer's training-set mean (the error of the sublayer-mean predictor, whose EV is
    therefore exactly 0). NaN where the weighted SST is 0. Averaging EV over seeds
    equals pooling their SSE (the denominator does not depend on the seed).
    """
    sse, sst = np.asarray(sse, dtype=np.float64), np.asarray(sst, dtype=np.float64)
    w = sequence_weights(weights, sst.shape[0])
    c = seed_fractions(seeds, sse.shape[0])
    numerator = np.stack([w @ seed_sse for seed_sse in sse], axis=1)  # (R, S, 2L), the same product as the denominator's
    per_seed = 1.0 - _safe_ratio(numerator, (w @ sst)[:, None, :])
    return _shape_out(_average_seeds(c, per_seed), weights, seeds)


def _weighted_block_variance(moments: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Variance over every entry of each sublayer's block of the weighted sequences, from
    per-sequence (mean, population variance) over units ``moments`` (..., n, 2L, 2) and
    weights w (R, n): mean variance + variance of the means, both weighted; means are
    centred on their unweighted mean first, which leaves the result unchanged and keeps
    the subtraction exact. Returns (R, ..., 2L)."""
    means, variances = moments[..., 0], moments[..., 1]
    centred = means - means.mean(axis=-2, keepdims=True)
    total = w.sum(axis=1)
    within = np.einsum("rn,...np->r...p", w, variances + centred**2)
    offset = np.einsum("rn,...np->r...p", w, centred)
    shape = (-1,) + (1,) * (within.ndim - 1)
    return within / total.reshape(shape) - (offset / total.reshape(shape)) ** 2


def ev_block(state_moments: np.ndarray, residual_moments: np.ndarray, weights=None, seeds=None) -> np.ndarray:
    """The literal block explained variance per sublayer, (2L,) or (R, 2L):
    1 - var(R_s) / var(X_s), each var over all entries (sequences x units) of sublayer s's
    block of the weighted test sequences about one grand mean, per seed, averaged over
    the chosen seeds.

    ``state_moments`` (n, 2L, 2) and ``residual_moments`` (S, n, 2L, 2) hold per test
    sequence and sublayer the mean and population variance over units of X and of
    R = X - Y. Weight w_i counts sequence i w_i times. NaN where var(X_s) = 0.
    """
    state = np.asarray(state_moments, dtype=np.float64)
    residual = np.asarray(residual_moments, dtype=np.float64)
    w = sequence_weights(weights, state.shape[0])
    c = seed_fractions(seeds, residual.shape[0])
    var_x = _weighted_block_variance(state, w)  # (Rw, 2L)
    var_r = _weighted_block_variance(residual, w)  # (Rw, S, 2L)
    per_seed = 1.0 - _safe_ratio(var_r, var_x[:, None, :])
    return _shape_out(_average_seeds(c, per_seed), weights, seeds)


def _average_seeds(fractions: np.ndarray, per_seed: np.ndarray) -> np.ndarray:
    """sum_s fractions[r, s] * per_seed[r, s, ...] with either leading axis of length 1
    broadcast against the other; NaN of a seed not chosen does not spread."""
    fractions, per_seed = np.broadcast_arrays(fractions[(...,) + (None,) * (per_seed.ndim - 2)], per_seed)
    return np.sum(np.where(fractions > 0, fractions * per_seed, 0.0), axis=1)


def group_size(n: int, part: int) -> int:
    """Size of the "early" and "late" groups of ``n`` sublayers or transitions: ceil(n / part), at least 1."""
    return max(1, -(-n // part))


def early_late(values: np.ndarray, part: int, reduce: str = "median") -> tuple[np.ndarray, np.ndarray]:
    """(early, late): the median (or mean) over the first and the last ceil(n / part) entries
    of the last axis of ``values``, ignoring NaN (NaN when a group is all NaN)."""
    values = np.asarray(values, dtype=np.float64)
    q = group_size(values.shape[-1], part)

    def reduced(group: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # an all-NaN group gives NaN without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(group, axis=-1) if reduce == "mean" else np.nanmedian(group, axis=-1)

    return reduced(values[..., :q]), reduced(values[..., -q:])


def step_ratio(step_distance: np.ndarray, weights=None, seeds=None, part: int = 4) -> np.ndarray:
    """Mean 2-D step over the last ceil(T / part) transitions divided by that over the first,
    per seed (steps averaged over the weighted test sequences), averaged over the chosen
    seeds: () or (R,). ``step_distance`` (S, n, T) per seed, test sequence and transition."""
    steps = np.asarray(step_distance, dtype=np.float64)
    w = sequence_weights(weights, steps.shape[1])
    c = seed_fractions(seeds, steps.shape[0])
    mean_steps = np.einsum("rn,snt->rst", w, steps) / w.sum(axis=1)[:, None, None]
    early, late = early_late(mean_steps, part, reduce="mean")
    return _shape_out(_average_seeds(c, late / early), weights, seeds)


def resample_seeds_and_sequences(n_seeds: int, n_sequences: int, n_resamples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded resamples for an interval over training seeds and test sequences: first the
    seeds with replacement (int64 (R, S) indices), then the test sequences with
    replacement, as bootstrap counts (float64 (R, n) weights)."""
    if n_seeds < 1 or n_sequences < 1:
        raise ValueError(f"resampling needs at least one seed and one sequence; got {n_seeds} and {n_sequences}.")
    if n_resamples < 1:
        raise ValueError(f"summary.bootstrap = {n_resamples}; it must be at least 1.")
    rng = np.random.default_rng([seed, n_seeds, n_sequences])
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    rows = rng.integers(0, n_sequences, size=(n_resamples, n_sequences))
    weights = np.zeros((n_resamples, n_sequences))
    np.add.at(weights, (np.arange(n_resamples)[:, None], rows), 1.0)
    return seeds, weights
