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
    rotated = V.T @ (B - B.T) @ V
    M = V @ (rotated / (eigenvalues[:, None] + eigenvalues[None, :])) @ V.T
    return (M - M.T) / 2.0


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


