"""PCA within each sublayer (Fig. 4C, second view): the spectrum of sublayer s's own
covariance, its participation ratio and the principal components it needs for a fraction
of its variance, and the same quantities on sequences resampled with replacement.

For sublayer s with states X_s (N x D), centred by their own mean, the eigenvalues
lambda_1 >= ... of the covariance X_s^T X_s / (N - 1) (squared residual-stream units)
come from the smaller of the two Gram matrices: the N x N X_s X_s^T when N < D, else the
D x D X_s^T X_s (both have the same nonzero eigenvalues). From them:

- participation ratio PR_s = (sum lambda)^2 / sum lambda^2 (between 1 and the rank);
- components for a fraction f: the smallest k with lambda_1 + ... + lambda_k >= f * sum lambda.

Every eigenvalue is computed, so the count is always defined when the sublayer has any
variance; it is bounded by the rank of X_s, at most min(N - 1, D) (and by the number of
distinct states - 1: sublayer 0 holds one state per last-token identity). A sublayer
without variance (all states equal) has PR = NaN and count -1.

Resampling: a bootstrap resample of the N sequences is a count vector c (N,), sum c = N.
Its covariance is sum_i c_i (x_i - m_c)(x_i - m_c)^T / (N - 1), m_c the weighted mean.
Only the ~0.63 N distinct sequences enter, so its nonzero eigenvalues are those of
W^1/2 K_c W^1/2 over the distinct rows, with K the N x N Gram of the sublayer (computed
once) re-centred at m_c: one small eigenproblem per resample and no product over D. For
N > 2 D that matrix is larger than the D x D weighted covariance X^T C X - N m_c m_c^T,
which is used instead.
"""

from __future__ import annotations

import numpy as np

#: above this many sequences per unit the resampled spectra use the D x D weighted covariance
RESAMPLE_GRAM_MAX_ASPECT = 2


def _descending(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending, from eigvalsh) in descending order, round-off negatives set to 0."""
    return np.clip(eigenvalues[..., ::-1], 0.0, None)


def own_spectrum(block: np.ndarray) -> np.ndarray:
    """Eigenvalues of the covariance of the rows of ``block`` (N, D) around their own mean,
    descending, float64 (min(N, D),), in squared input units (divided by N - 1)."""
    centred = np.asarray(block, dtype=np.float64)
    n_rows, n_features = centred.shape
    if n_rows < 2:
        raise ValueError(f"a sublayer spectrum needs at least 2 sequences; got {n_rows}.")
    centred = centred - centred.mean(axis=0)
    gram = centred @ centred.T if n_rows < n_features else centred.T @ centred
    return _descending(np.linalg.eigvalsh(gram)) / (n_rows - 1)


def participation_ratio(eigenvalues: np.ndarray) -> np.ndarray:
    """(sum lambda)^2 / sum lambda^2 along the last axis; NaN where there is no variance."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    total = eigenvalues.sum(axis=-1)
    squares = np.square(eigenvalues).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(squares > 0, total**2 / np.where(squares > 0, squares, 1.0), np.nan)


def components_for_fraction(eigenvalues: np.ndarray, fraction: float) -> np.ndarray:
    """Smallest k with the k largest eigenvalues (last axis, descending) summing to at least
    ``fraction`` of their total; -1 where there is no variance. int32."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    cumulative = np.cumsum(eigenvalues, axis=-1)
    total = cumulative[..., -1:]
    reached = cumulative >= fraction * total
    count = np.argmax(reached, axis=-1) + 1
    return np.where(total[..., 0] > 0, count, -1).astype(np.int32)


def numerical_rank(eigenvalues: np.ndarray, n_rows: int, n_features: int) -> np.ndarray:
    """Eigenvalues above lambda_max * max(N, D) * float64 eps (the round-off of the Gram's
    eigensolver) along the last axis: the rank of the centred states. int32."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    tolerance = eigenvalues.max(axis=-1, keepdims=True) * max(n_rows, n_features) * np.finfo(np.float64).eps
    return np.sum((eigenvalues > tolerance) & (eigenvalues > 0), axis=-1).astype(np.int32)


def resampled_spectra(block: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Own-covariance eigenvalues of ``block`` (N, D) for every resample ``counts`` (B, N)
    (how often each row is drawn; each row of counts sums to N): float64 (B, min(N, D)),
    descending, zero-padded past each resample's number of distinct rows.

    Each resample equals :func:`own_spectrum` of the rows repeated as counted (see the
    module docstring for the two routes)."""
    centred = np.asarray(block, dtype=np.float64)
    n_rows, n_features = centred.shape
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != n_rows:
        raise ValueError(f"resample counts must be (B, {n_rows}); got shape {counts.shape}.")
    centred = centred - centred.mean(axis=0)
    width = min(n_rows, n_features)
    out = np.zeros((len(counts), width))
    if n_rows <= RESAMPLE_GRAM_MAX_ASPECT * n_features:
        gram = centred @ centred.T
        for b, weights in enumerate(counts):
            rows = np.flatnonzero(weights)
            w = weights[rows].astype(np.float64)
            n = w.sum()
            sub = gram[np.ix_(rows, rows)]
            row_mean = sub @ w / n  # <y_i, m_c> for the distinct rows
            grand = w @ row_mean / n  # <m_c, m_c>
            recentred = sub - row_mean[:, None] - row_mean[None, :] + grand
            root = np.sqrt(w)
            values = _descending(np.linalg.eigvalsh(root[:, None] * recentred * root[None, :]))
            take = min(width, len(values))
            out[b, :take] = values[:take] / (n - 1)
        return out
    for b, weights in enumerate(counts):
        w = weights.astype(np.float64)
        n = w.sum()
        weighted_mean = w @ centred / n
        covariance = (centred * w[:, None]).T @ centred - n * np.outer(weighted_mean, weighted_mean)
        out[b] = _descending(np.linalg.eigvalsh(covariance))[:width] / (n - 1)
    return out


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in every resample: int64 (B, n) from indices (B, n)."""
    indices = np.asarray(indices)
    counts = np.zeros((len(indices), n), dtype=np.int64)
    np.add.at(counts, (np.arange(len(indices))[:, None], indices), 1)
    return counts
