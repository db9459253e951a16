"""PCA solvers shared by the stages (pooled PCA of the geometry stage, the k-PC scores
of jPCA): the data matrix is centred by its mean and decomposed by SVD.

Three solvers give the same leading components (up to float round-off): ``full`` (LAPACK
SVD of the centred matrix), ``gram`` (eigendecomposition of the smaller of the two Gram
matrices, accumulated in float64 chunks; fast when the matrix is far from square) and
``randomized`` (Halko et al. range finder with power iterations; for large, near-square
matrices when only a few components are wanted). ``auto`` picks one from the shape. Signs
are fixed so that the largest-magnitude loading of every component is positive, whichever
solver ran.

Memory (:func:`fit_pca_streamed`): the capture is read in sample blocks (pooled mean,
then the D x D Gram) and in sublayer groups, never as a float64 copy of the whole
(N * 2L, D) matrix, when the ``gram`` solver runs on a matrix taller than wide (what
``auto`` picks at the paper's 64,000 x 4096). ``full``, ``randomized`` and the N x N Gram
of a wide matrix hold the centred matrix in float64."""

from __future__ import annotations

from typing import Any

import numpy as np

from rsdyn.core.jobs import progress

SOLVERS = ("auto", "full", "gram", "randomized")

#: ``auto`` uses the Gram path when the matrix is at least this many times taller than wide (or wider than tall)
GRAM_ASPECT_RATIO = 4

#: ``auto`` uses the randomized path only above this smaller side, and for K at most a tenth of it
RANDOMIZED_MIN_SIDE = 4096

_ROW_CHUNK = 8192

#: float32 bytes of the capture read at once (one sample block or one sublayer group)
_BLOCK_BYTES = 64 * 2**20

#: float64 bytes of one centred row chunk added into the Gram
_CHUNK_BYTES = 32 * 2**20


def choose_solver(n_rows: int, n_features: int, n_components: int, solver: str = "auto") -> str:
    """The solver that ``fit_pca`` runs for a matrix of this shape (``solver`` unless ``auto``)."""
    if solver not in SOLVERS:
        raise ValueError(f"PCA solver {solver!r} is unknown; allowed solvers are {', '.join(SOLVERS)}.")
    if solver != "auto":
        return solver
    small, large = sorted((n_rows, n_features))
    if large >= GRAM_ASPECT_RATIO * small:
        return "gram"
    if small >= RANDOMIZED_MIN_SIDE and n_components * 10 <= small:
        return "randomized"
    return "full"


def _check_shape(n_rows: int, n_features: int, n_components: int) -> None:
    """Raise ValueError unless a (n_rows, n_features) matrix has at least 2 rows and room for n_components."""
    if n_rows < 2:
        raise ValueError(f"PCA needs at least 2 samples; got {n_rows}.")
    if not 1 <= n_components <= min(n_rows, n_features):
        raise ValueError(
            f"PCA n_components = {n_components} is out of range; allowed is 1 to "
            f"min(samples, features) = {min(n_rows, n_features)}."
        )


def _check_matrix(X: np.ndarray, n_components: int) -> None:
    if X.ndim != 2:
        raise ValueError(f"PCA needs a 2-D (samples, features) matrix; got shape {X.shape}.")
    _check_shape(*X.shape, n_components)
    if not np.isfinite(X).all():
        raise ValueError("PCA input contains NaN or infinite values; the capture must be finite.")


def _centred_chunks(X: np.ndarray, mean: np.ndarray, desc: str):
    """Float64 row blocks of ``X - mean`` (keeps memory at one block above the input)."""
    starts = range(0, X.shape[0], _ROW_CHUNK)
    for start in progress(starts, desc=desc, unit="block", leave=False, disable=len(starts) < 4):
        yield start, X[start : start + _ROW_CHUNK].astype(np.float64) - mean


def _svd_full(X, mean, k):
    centred = X.astype(np.float64) - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    return singular[:k], vt[:k], float(np.sum(singular**2))


def _svd_gram(X, mean, k):
    n_rows, n_features = X.shape
    if n_rows >= n_features:  # D x D covariance-type Gram: eigenvectors are the components
        gram = np.zeros((n_features, n_features))
        for _, block in _centred_chunks(X, mean, "pca gram"):
            gram += block.T @ block
        return _components_of_covariance_gram(gram, k)
    centred = X.astype(np.float64) - mean  # N x N Gram: components = X^T u / s
    gram = centred @ centred.T
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1][:k]
    singular = np.sqrt(np.clip(eigval[order], 0.0, None))
    components = (centred.T @ eigvec[:, order]) / np.where(singular > 0, singular, 1.0)
    return singular, components.T, float(np.trace(gram))


def _components_of_covariance_gram(gram: np.ndarray, k: int):
    """Singular values, components (k, D) and total sum of squares from the D x D centred Gram."""
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1]
    eigval = np.clip(eigval[order], 0.0, None)
    return np.sqrt(eigval[:k]), eigvec[:, order[:k]].T, float(np.trace(gram))


def _svd_randomized(X, mean, k, oversample=20, power_iterations=7, seed=0):
    n_rows, n_features = X.shape
    centred = X.astype(np.float64) - mean
    rng = np.random.default_rng(seed)
    width = min(k + oversample, n_rows, n_features)
    basis = centred @ rng.standard_normal((n_features, width))
    basis, _ = np.linalg.qr(basis)
    for _ in range(power_iterations):  # QR after each product keeps the basis well conditioned
        basis, _ = np.linalg.qr(centred.T @ basis)
        basis, _ = np.linalg.qr(centred @ basis)
    _, singular, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
    return singular[:k], vt[:k], float(np.einsum("ij,ij->", centred, centred))


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each component so that its largest-magnitude loading is positive."""
    pivot = components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)]
    return components * np.where(pivot < 0, -1.0, 1.0)[:, None]


def fit_pca(X: np.ndarray, n_components: int = 100, solver: str = "auto") -> dict[str, Any]:
    """PCA of the rows of ``X`` (samples x features), centred by their mean.

    Returns float64 arrays: ``mean`` (D,), ``components`` (K, D) (orthonormal rows,
    sorted by decreasing variance), ``singular_values`` (K,), ``explained_variance``
    (K,) (variance along each component, sum of squares / (M - 1), in squared input
    units), ``explained_variance_ratio`` (K,) (fraction of the total variance of all
    M x D entries), ``total_variance`` (scalar, same units) and ``solver`` (the one run).
    """
    X = np.asarray(X)
    _check_matrix(X, n_components)
    resolved = choose_solver(*X.shape, n_components, solver)
    mean = X.mean(axis=0, dtype=np.float64)
    fit = {"full": _svd_full, "gram": _svd_gram, "randomized": _svd_randomized}[resolved]
    return _fit_result(mean, *fit(X, mean, n_components), X.shape[0], resolved)


def _fit_result(mean, singular, components, total_sum_squares, n_rows, resolved) -> dict[str, Any]:
    components = _fix_signs(components)
    return {
        "mean": mean,
        "components": components,
        "singular_values": singular,
        "explained_variance": singular**2 / (n_rows - 1),
        "explained_variance_ratio": singular**2 / total_sum_squares,
        "total_variance": total_sum_squares / (n_rows - 1),
        "solver": resolved,
    }


def _sample_step(states) -> int:
    """Sequences per sample block: about ``_BLOCK_BYTES`` of float32, a multiple of the
    store's sample chunk when it has one (so every chunk is read once per pass)."""
    n_samples, n_sublayers, d_model = states.shape
    step = max(1, _BLOCK_BYTES // (4 * n_sublayers * d_model))
    chunks = getattr(states, "chunks", None)
    if chunks and chunks[0] < n_samples:
        step = max(chunks[0], step // chunks[0] * chunks[0])
    return min(step, n_samples)


def _sample_blocks(states, desc: str):
    """Sample blocks (b, 2L, D) of an (N, 2L, D) array or zarr array in its own dtype, read in turn."""
    step = _sample_step(states)
    starts = range(0, states.shape[0], step)
    for start in progress(starts, desc=desc, unit="block", leave=False, disable=len(starts) < 4):
        block = np.asarray(states[start : start + step])
        if not np.isfinite(block).all():
            raise ValueError("PCA input contains NaN or infinite values; the capture must be finite.")
        yield block


def _row_chunks(rows: np.ndarray):
    """Float64 copies of consecutive row chunks of a 2-D block, about ``_CHUNK_BYTES`` each."""
    step = max(1, _CHUNK_BYTES // (8 * rows.shape[1]))
    for start in range(0, len(rows), step):
        yield rows[start : start + step].astype(np.float64)


def sublayer_groups(states):
    """``(first sublayer, block (N, g, D))`` for groups of about ``_BLOCK_BYTES`` of float32."""
    n_samples, n_sublayers, d_model = states.shape
    step = int(np.clip(_BLOCK_BYTES // (4 * n_samples * d_model), 1, n_sublayers))
    for start in range(0, n_sublayers, step):
        yield start, np.asarray(states[:, start : start + step])


def fit_pca_streamed(states, n_components: int = 100, solver: str = "auto") -> dict[str, Any]:
    """:func:`fit_pca` of the (N * 2L, D) rows of ``states`` (N, 2L, D), an array or a zarr
    array, read in sample blocks: two passes (mean, then the D x D centred Gram) when the
    ``gram`` solver runs on a matrix at least as tall as wide; other solvers and shapes
    read the whole matrix (see the module docstring)."""
    n_samples, n_sublayers, d_model = states.shape
    n_rows = n_samples * n_sublayers
    _check_shape(n_rows, d_model, n_components)
    resolved = choose_solver(n_rows, d_model, n_components, solver)
    if resolved != "gram" or n_rows < d_model:
        return fit_pca(np.asarray(states[...]).reshape(n_rows, d_model), n_components, resolved)
    total = np.zeros(d_model)
    for block in _sample_blocks(states, "pca mean"):
        for chunk in _row_chunks(block.reshape(-1, d_model)):
            total += chunk.sum(axis=0)
    mean = total / n_rows
    gram = np.zeros((d_model, d_model))
    for block in _sample_blocks(states, "pca gram"):
        for chunk in _row_chunks(block.reshape(-1, d_model)):
            chunk -= mean
            gram += chunk.T @ chunk
    return _fit_result(mean, *_components_of_covariance_gram(gram, n_components), n_rows, resolved)


def project(X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Scores of ``X`` (..., D) on ``components`` (K, D): ``(X - mean) @ components.T`` (..., K)."""
    return (np.asarray(X, dtype=np.float64) - mean) @ components.T
