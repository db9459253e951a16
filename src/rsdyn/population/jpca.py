"""Population rotations over depth: jPCA (Churchland et al. 2012) of the residual stream.

The definition, so that anyone can recompute it from ``activations.zarr``:

1. states (N, S, D) of one condition (S = 2L sublayers); centre them by the pooled mean
   over samples and sublayers; project on the top k pooled principal components
   (``jpca.k``) -> X (N, S, k);
2. Xdot = np.gradient(X) over sublayers, per sample;
3. pool the rows of all samples and sublayers: X, Xdot (N S, k);
4. M_best = least-squares solution of Xdot = X M; M_skew = least squares restricted to
   skew-symmetric M (the normal equations are the Sylvester equation
   C M + M C = B - B^T with C = X^T X, B = X^T Xdot);
5. R^2 = 1 - ||Xdot - mean(Xdot) - X M||^2 / ||Xdot - mean(Xdot)||^2 (the mean over
   rows, per component) for both; ``jpca_ratio`` = R^2_skew / R^2_best. Because X is
   centred, X^T 1 = 0 and the fits of Xdot and of Xdot - mean(Xdot) give the same M:
   the mean derivative (the drift shared by every state, large in the residual
   stream, whose norm grows with depth) is the intercept of the linear model. The
   issue's literal formula 1 - ||Xdot - X M||^2 / ||Xdot - mean(Xdot)||^2 counts that
   drift as unexplained: it equals the R^2 above minus the same constant
   n ||mean(Xdot)||^2 / ||Xdot - mean(Xdot)||^2 for both fits, so its ratio is not a
   share of rotation (both R^2 can be negative); it is kept as ``*_literal``;
6. rotation frequencies = |imaginary parts| of the eigenvalues of M_skew (radians per
   sublayer; turns per sublayer = |omega| / 2 pi), one per plane, largest first; the
   jPC planes are the real and imaginary parts of the eigenvector pairs, oriented so
   that the rotation runs counter-clockwise and the first axis carries the larger
   variance; the trajectories are projected on the first plane.

Rows are states (row convention): the dynamics of a column vector x is x' = M^T x.
``windows`` repeat the whole definition on the states of a range of sublayers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rsdyn.core.errors import PopulationInputError


def skew_least_squares(X: np.ndarray, Xdot: np.ndarray) -> np.ndarray:
    """The skew-symmetric M minimising ||Xdot - X M||_F, for rows X, Xdot (M, k).

    Setting the gradient's skew part to zero gives C M + M C = B - B^T (C = X^T X,
    B = X^T Xdot), solved in the eigenbasis of C: M'_ij = (V^T (B - B^T) V)_ij / (c_i + c_j).
    Unique when X has full column rank.
    """
    C = X.T @ X
    B = X.T @ Xdot
    eigenvalues, V = np.linalg.eigh(C)
    if eigenvalues[0] <= eigenvalues[-1] * 1e-14:
        raise PopulationInputError("jPCA needs states of full rank k; lower jpca.k or use more samples.")
    return _skew_solution(eigenvalues, V, B)


def _skew_solution(eigenvalues: np.ndarray, V: np.ndarray, B: np.ndarray) -> np.ndarray:
    """:func:`skew_least_squares`' M from C's eigendecomposition (eigenvalues (..., k), V
    (..., k, k)) and B = X^T Xdot (..., k, k); batched over any leading axes."""
    Vt = np.swapaxes(V, -1, -2)
    rotated = Vt @ (B - np.swapaxes(B, -1, -2)) @ V
    M = V @ (rotated / (eigenvalues[..., :, None] + eigenvalues[..., None, :])) @ Vt
    return (M - np.swapaxes(M, -1, -2)) / 2.0


def r_squared(X: np.ndarray, Xdot: np.ndarray, M: np.ndarray, intercept: bool = True) -> float:
    """1 - ||Xdot - b - X M||^2 / ||Xdot - mean(Xdot)||^2 (means over rows, per column);
    b = mean(Xdot) with ``intercept``, else 0 (the literal formula)."""
    total = Xdot - Xdot.mean(axis=0)
    residual = (total if intercept else Xdot) - X @ M
    return float(1.0 - np.sum(residual**2) / np.sum(total**2))


def fit_dynamics(X: np.ndarray, Xdot: np.ndarray) -> dict[str, Any]:
    """Both least-squares fits of Xdot = X M on pooled rows (M, k) and their R^2.

    Returns ``m_best``, ``m_skew`` (k, k), ``r2_best``, ``r2_skew``, ``jpca_ratio`` and
    the literal variants ``r2_best_literal``, ``r2_skew_literal``, ``jpca_ratio_literal``
    (see the module docstring). X should be centred (column means 0).
    """
    X = np.asarray(X, dtype=np.float64)
    Xdot = np.asarray(Xdot, dtype=np.float64)
    m_best = np.linalg.lstsq(X, Xdot, rcond=None)[0]
    m_skew = skew_least_squares(X, Xdot)
    out: dict[str, Any] = {"m_best": m_best, "m_skew": m_skew}
    for suffix, intercept in (("", True), ("_literal", False)):
        r2_best, r2_skew = r_squared(X, Xdot, m_best, intercept), r_squared(X, Xdot, m_skew, intercept)
        out[f"r2_best{suffix}"], out[f"r2_skew{suffix}"] = r2_best, r2_skew
        out[f"jpca_ratio{suffix}"] = r2_skew / r2_best if r2_best != 0 else np.nan
    return out


def rotation_planes(m_skew: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (n_planes,) in radians per sublayer, largest first, and the planes
    (n_planes, k, 2): orthonormal bases in which x' = M_skew^T x turns counter-clockwise.

    n_planes = k // 2; for odd k the zero eigenvalue has no plane.
    """
    A = m_skew.T  # column dynamics x' = A x
    k = A.shape[0]
    mu, vectors = np.linalg.eigh(1j * A)  # Hermitian; A v = -i mu v
    order = np.argsort(mu)  # most negative mu = largest positive frequency omega = -mu
    planes, frequencies = [], []
    for index in order[: k // 2]:
        omega = -mu[index]
        v = vectors[:, index]  # A v = i omega v, v = p + i q: A p = -omega q, A q = omega p
        p, q = v.real, v.imag
        basis = np.stack([p / np.linalg.norm(p), -q / np.linalg.norm(q)], axis=1) if omega > 0 else _any_plane(p, q)
        planes.append(basis)
        frequencies.append(max(omega, 0.0))
    return np.asarray(frequencies), np.asarray(planes).reshape(k // 2, k, 2)


def _any_plane(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """An orthonormal pair spanning (p, q) for a zero frequency (no rotation sense)."""
    basis, _ = np.linalg.qr(np.stack([p + q, p - q], axis=1))
    return basis


def orient_plane(plane: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rotate a plane (k, 2) within itself (keeping its sense of rotation) so that the
    first axis carries the largest variance of the rows X (M, k), and the largest
    loading of that axis is positive."""
    scores = X @ plane
    scores = scores - scores.mean(axis=0)
    cov = scores.T @ scores
    angle = 0.5 * np.arctan2(2.0 * cov[0, 1], cov[0, 0] - cov[1, 1])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    oriented = plane @ rotation
    if oriented[np.argmax(np.abs(oriented[:, 0])), 0] < 0:
        oriented = -oriented
    return oriented


def jpca_of_scores(scores: np.ndarray) -> dict[str, Any]:
    """jPCA (steps 2-6 of the module docstring) of centred PC scores (N, S, k)."""
    n_samples, n_sublayers, k = scores.shape
    if n_sublayers < 2:
        raise PopulationInputError(f"jPCA needs at least 2 sublayers; got {n_sublayers}.")
    derivative = np.gradient(scores, axis=1)
    X, Xdot = scores.reshape(-1, k), derivative.reshape(-1, k)
    fit = fit_dynamics(X, Xdot)
    frequencies, planes = rotation_planes(fit["m_skew"])
    if len(planes):
        planes[0] = orient_plane(planes[0], X)
        projection = scores @ planes[0]
    else:
        projection = np.zeros((n_samples, n_sublayers, 2))
    return {**fit, "frequencies": frequencies, "turns_per_sublayer": frequencies / (2 * np.pi), "planes": planes, "projection": projection}


# --------------------------------------------------------------------------- ratios of many row sets

#: the ratio keys :func:`ratios_from_moments` returns
RATIO_KEYS = ("r2_best", "r2_skew", "jpca_ratio", "r2_best_literal", "r2_skew_literal", "jpca_ratio_literal")


def ratios_from_moments(C: np.ndarray, B: np.ndarray, E: np.ndarray, drift: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`fit_dynamics`'s R^2 values and ratios for a batch of centred row sets from
    their moments alone: C = X^T X, B = X^T Xdot and E = (Xdot - mean)^T (Xdot - mean)
    (..., k, k), and the drift n ||mean(Xdot)||^2 (...), the mean over the n rows.

    X centred makes the column sums of X M zero, so for any M the residual with the
    intercept is ||Xdot - mean - X M||^2 = tr E - 2 tr(M^T B) + tr(M^T C M) and the
    literal one (no intercept) is that plus the drift. M_best solves C M = B (the
    least-squares normal equations); M_skew is :func:`skew_least_squares`'s. A row set
    whose C is not of full rank k gives NaN (that row set only). The R^2 values equal
    :func:`fit_dynamics`'s to the rounding of the moments (about 1e-12 relative here)."""
    C, B, E, drift = (np.asarray(a, dtype=np.float64) for a in (C, B, E, drift))
    eigenvalues, V = np.linalg.eigh(C)
    full_rank = eigenvalues[..., 0] > eigenvalues[..., -1] * 1e-14
    safe = np.where(full_rank[..., None], eigenvalues, 1.0)
    m_skew = _skew_solution(safe, V, B)
    m_best = ((V / safe[..., None, :]) @ np.swapaxes(V, -1, -2)) @ B
    total = np.trace(E, axis1=-2, axis2=-1)
    residual = {name: total - 2.0 * np.sum(M * B, axis=(-2, -1)) + np.sum(M * (C @ M), axis=(-2, -1))
                for name, M in (("best", m_best), ("skew", m_skew))}
    out: dict[str, np.ndarray] = {}
    for suffix, offset in (("", 0.0), ("_literal", drift)):
        with np.errstate(invalid="ignore", divide="ignore"):  # a rank-deficient row set: NaN below
            best, skew = (1.0 - (residual[name] + offset) / total for name in ("best", "skew"))
            ratio = np.where(best != 0, skew / np.where(best != 0, best, 1.0), np.nan)
        for key, value in (("r2_best", best), ("r2_skew", skew), ("jpca_ratio", ratio)):
            out[key + suffix] = np.where(full_rank, value, np.nan)
    return out


def _row_moments(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X^T X, X^T Y and Y^T Y (..., k, k) over the rows of X, Y (..., M, k)."""
    return (np.einsum("...mk,...ml->...kl", X, X), np.einsum("...mk,...ml->...kl", X, Y),
            np.einsum("...mk,...ml->...kl", Y, Y))


def weighted_jpca_ratios(scores: np.ndarray, weights: np.ndarray, each_sublayer: bool = False) -> dict[str, np.ndarray]:
    """:func:`ratios_from_moments` of the scores (N, S, k) with the sequences weighted by
    each row of count ``weights`` (B, N): resample b is the scores of sequence i repeated
    weights[b, i] times, re-centred by its pooled mean, or with ``each_sublayer`` by its
    mean over sequences at each sublayer (the deviations), as :func:`jpca_of_scores` of
    that resample computes it. np.gradient is linear, so the derivative of a re-centred
    resample is each sequence's derivative minus the weighted mean derivative (zero for
    a pooled centre, constant over sublayers); every moment is then a weighted sum of
    per-sequence moments minus the centre's. The moments are taken about the whole
    data's pooled means (a shift that changes no centred moment) to keep the
    subtractions small. Returns arrays (B,)."""
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    n_samples, n_sublayers, k = scores.shape
    derivative = np.gradient(scores, axis=1)
    d_shift = derivative.reshape(-1, k).mean(axis=0)
    x = scores - scores.reshape(-1, k).mean(axis=0)
    d = derivative - d_shift
    C, B, E = (part.reshape(n_samples, -1) for part in _row_moments(x, d))
    count = weights.sum(axis=1)  # sequences per resample
    C, B, E = ((weights @ part).reshape(-1, k, k) for part in (C, B, E))
    n_rows = count * n_sublayers
    if each_sublayer:  # centre each sublayer: subtract the per-sublayer means' moments
        x_mean = (weights @ x.reshape(n_samples, -1)).reshape(-1, n_sublayers, k) / count[:, None, None]
        d_mean = (weights @ d.reshape(n_samples, -1)).reshape(-1, n_sublayers, k) / count[:, None, None]
        C = C - count[:, None, None] * np.einsum("bsk,bsl->bkl", x_mean, x_mean)
        B = B - count[:, None, None] * np.einsum("bsk,bsl->bkl", x_mean, d_mean)
        E = E - count[:, None, None] * np.einsum("bsk,bsl->bkl", d_mean, d_mean)
        drift = np.zeros(len(weights))
    else:
        x_mean = (weights @ x.sum(axis=1)) / n_rows[:, None]
        d_mean = (weights @ d.sum(axis=1)) / n_rows[:, None]
        C = C - n_rows[:, None, None] * x_mean[:, :, None] * x_mean[:, None, :]
        B = B - n_rows[:, None, None] * x_mean[:, :, None] * d_mean[:, None, :]
        E = E - n_rows[:, None, None] * d_mean[:, :, None] * d_mean[:, None, :]
        drift = n_rows * np.sum((d_mean + d_shift) ** 2, axis=1)
    return ratios_from_moments(C, B, E, drift)


def pooled_pcs(states: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled mean (D,), top-k components (k, D) and their explained-variance ratios (k,)
    of the states (N, S, D), every sample and sublayer one row."""
    from rsdyn.core.linalg import fit_pca

    n_samples, n_sublayers, d_model = states.shape
    if not 2 <= k <= min(n_samples * n_sublayers - 1, d_model):
        raise PopulationInputError(
            f"jpca.k = {k} does not fit {n_samples} x {n_sublayers} states of dimension {d_model}; "
            f"allowed is 2 to {min(n_samples * n_sublayers - 1, d_model)}."
        )
    fit = fit_pca(states.reshape(-1, d_model), n_components=k)
    return fit["mean"], fit["components"], fit["explained_variance_ratio"]


def pc_scores(states: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step 1: the states centred by their pooled mean and projected on the top k pooled
    PCs, (N, S, k), and the PCA (``mean``, ``components``, ``explained_variance_ratio``)."""
    mean, components, ratio = pooled_pcs(states, k)
    scores = (np.asarray(states, dtype=np.float64) - mean) @ components.T
    return scores, {"mean": mean, "components": components, "explained_variance_ratio": ratio}


def jpca(states: np.ndarray, k: int = 6) -> dict[str, Any]:
    """jPCA of the states (N, S, D) of one condition, exactly as the module docstring says.

    Returns the PCA (``mean``, ``components``, ``explained_variance_ratio``), ``m_best``,
    ``m_skew``, ``r2_best``, ``r2_skew``, ``jpca_ratio``, ``frequencies``,
    ``turns_per_sublayer``, ``planes`` (k//2, k, 2, in PC coordinates) and
    ``projection`` (N, S, 2) on the first plane.
    """
    scores, pca = pc_scores(states, k)
    return {**pca, **jpca_of_scores(scores)}


