"""PCA of the residual stream, samples and sublayers pooled (paper §2.8, Fig. 4 A-C).

The data matrix is the capture's ``(N, 2L, D)`` array flattened to ``(N * 2L, D)``:
every sublayer state of every sequence is one row. It is centred by the pooled mean and
decomposed by SVD. Three solvers give the same leading components (up to float
round-off): ``full`` (LAPACK SVD of the centred matrix), ``gram`` (eigendecomposition
of the smaller of the two Gram matrices, accumulated in float64 chunks; fast when the
matrix is far from square) and ``randomized`` (Halko et al. range finder with power
iterations; for large, near-square matrices when only a few components are wanted).
``auto`` picks one from the shape. Signs are fixed so that the largest-magnitude
loading of every component is positive, whichever solver ran.

Explained variance per sublayer (a proper R^2 of the reconstruction): for sublayer s
with states X_s (N x D) and k components,

    EV_s(k) = 1 - ||X_s - recon_k(X_s)||^2 / ||X_s - mean(X_s)||^2,
    recon_k(x) = mu + (x - mu) V_k^T V_k,

where mu is the pooled mean and V_k the first k components. The reference is the
sublayer's own mean, so EV_s(k) can be negative for small k when mu is far from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

SOLVERS = ("auto", "full", "gram", "randomized")

#: ``auto`` uses the Gram path when the matrix is at least this many times taller than wide (or wider than tall)
GRAM_ASPECT_RATIO = 4
#: ``auto`` uses the randomized path only above this smaller side, and for K at most a tenth of it
RANDOMIZED_MIN_SIDE = 4096

_ROW_CHUNK = 8192


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


def _check_matrix(X: np.ndarray, n_components: int) -> None:
    if X.ndim != 2:
        raise ValueError(f"PCA needs a 2-D (samples, features) matrix; got shape {X.shape}.")
    n_rows, n_features = X.shape
    if n_rows < 2:
        raise ValueError(f"PCA needs at least 2 samples; got {n_rows}.")
    if not 1 <= n_components <= min(n_rows, n_features):
        raise ValueError(
            f"PCA n_components = {n_components} is out of range; allowed is 1 to "
            f"min(samples, features) = {min(n_rows, n_features)}."
        )
    if not np.isfinite(X).all():
        raise ValueError("PCA input contains NaN or infinite values; the capture must be finite.")


def _centred_chunks(X: np.ndarray, mean: np.ndarray, desc: str):
    """Float64 row blocks of ``X - mean`` (keeps memory at one block above the input)."""
    starts = range(0, X.shape[0], _ROW_CHUNK)
    for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 4):
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
        eigval, eigvec = np.linalg.eigh(gram)
        order = np.argsort(eigval)[::-1]
        eigval = np.clip(eigval[order], 0.0, None)
        return np.sqrt(eigval[:k]), eigvec[:, order[:k]].T, float(np.trace(gram))
    centred = X.astype(np.float64) - mean  # N x N Gram: components = X^T u / s
    gram = centred @ centred.T
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1][:k]
    singular = np.sqrt(np.clip(eigval[order], 0.0, None))
    components = (centred.T @ eigvec[:, order]) / np.where(singular > 0, singular, 1.0)
    return singular, components.T, float(np.trace(gram))


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
    singular, components, total_sum_squares = fit(X, mean, n_components)
    components = _fix_signs(components)
    n_rows = X.shape[0]
    return {
        "mean": mean,
        "components": components,
        "singular_values": singular,
        "explained_variance": singular**2 / (n_rows - 1),
        "explained_variance_ratio": singular**2 / total_sum_squares,
        "total_variance": total_sum_squares / (n_rows - 1),
        "solver": resolved,
    }


def project(X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Scores of ``X`` (..., D) on ``components`` (K, D): ``(X - mean) @ components.T`` (..., K)."""
    return (np.asarray(X, dtype=np.float64) - mean) @ components.T


def ev_per_sublayer_curve(states: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Explained variance (R^2, see module docstring) of each sublayer with k = 1..K components.

    ``states`` is (N, S, D); returns (S, K): entry [s, k-1] is EV_s(k). Uses the
    orthonormality of the components: ||x - recon_k(x)||^2 = ||x - mu||^2 - sum_{j<=k} score_j^2,
    so one projection onto K components gives the whole curve.
    """
    n_samples, n_sublayers, _ = states.shape
    n_components = len(components)
    captured = np.zeros((n_sublayers, n_components))  # sum over samples of score^2
    centred_ss = np.zeros(n_sublayers)  # ||X_s - mu||^2
    own_ss = np.zeros(n_sublayers)  # ||X_s - mean_s||^2
    for s in tqdm(range(n_sublayers), desc="pca ev per sublayer", leave=False):
        block = states[:, s].astype(np.float64)
        centred = block - mean
        scores = centred @ components.T
        captured[s] = np.sum(scores**2, axis=0)
        centred_ss[s] = np.sum(centred**2)
        own_ss[s] = np.sum((block - block.mean(axis=0)) ** 2)
    residual = centred_ss[:, None] - np.cumsum(captured, axis=1)
    return 1.0 - residual / np.where(own_ss > 0, own_ss, np.nan)[:, None]


def components_needed(curve: np.ndarray, threshold: float) -> np.ndarray:
    """Smallest k with ``curve[..., k-1] >= threshold`` along the last axis; -1 where never reached."""
    reached = curve >= threshold
    first = np.argmax(reached, axis=-1) + 1
    return np.where(reached.any(axis=-1), first, -1).astype(np.int32)


def check_pca_settings(settings: Mapping[str, Any], n_samples: int, n_sublayers: int, d_model: int) -> None:
    """Raise one clear ValueError when the pca settings do not fit the capture's shape."""
    k = settings["n_components"]
    limit = min(n_samples * n_sublayers, d_model)
    if not 2 <= k <= limit:
        raise ValueError(
            f"pca.n_components = {k} does not fit the capture ({n_samples} x {n_sublayers} "
            f"states of dimension {d_model}); allowed is 2 to {limit}."
        )
    threshold = settings.get("variance_threshold", 0.9)
    if not 0 < threshold < 1:
        raise ValueError(f"pca.variance_threshold = {threshold}; it must lie strictly between 0 and 1.")
    choose_solver(1, 1, 1, settings.get("solver", "auto"))


def pca_of_states(states: np.ndarray, n_components: int, solver: str = "auto", threshold: float = 0.9) -> dict[str, np.ndarray]:
    """Every array of ``pca.zarr`` from the capture's (N, 2L, D) states.

    ``mean`` (D,), ``components`` (K, D), ``singular_values``, ``explained_variance``,
    ``explained_variance_ratio`` (K,), ``ev_per_sublayer`` (2L,) (R^2 with all K
    components), ``ev_per_sublayer_curve`` (2L, K) (R^2 with the first k), ``n_components_90``
    (2L,) (smallest k with R^2 >= ``threshold``; -1 if not within K; the name keeps 90
    whatever the threshold, stored in the attributes), ``n_components_90_pooled`` (scalar,
    the same for the pooled cumulative ratio) and ``projection`` (N, 2L, 2), the PC1-PC2
    scores of every state. Float arrays are stored as float32 except the components and mean.
    """
    n_samples, n_sublayers, d_model = states.shape
    fit = fit_pca(states.reshape(n_samples * n_sublayers, d_model), n_components, solver)
    curve = ev_per_sublayer_curve(states, fit["mean"], fit["components"])
    projection = project(states, fit["mean"], fit["components"][:2])
    cumulative = np.cumsum(fit["explained_variance_ratio"])
    return {
        "mean": fit["mean"].astype(np.float32),
        "components": fit["components"].astype(np.float32),
        "singular_values": fit["singular_values"].astype(np.float32),
        "explained_variance": fit["explained_variance"].astype(np.float32),
        "explained_variance_ratio": fit["explained_variance_ratio"].astype(np.float32),
        "ev_per_sublayer": curve[:, -1].astype(np.float32),
        "ev_per_sublayer_curve": curve.astype(np.float32),
        "n_components_90": components_needed(curve, threshold),
        "n_components_90_pooled": components_needed(cumulative, threshold),
        "projection": projection.astype(np.float32),
    }


def run_pca(store_path, settings: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Read ``settings['condition']`` from the capture at ``store_path`` and return ``pca_of_states``.

    ``settings`` is the run's ``pca`` section (n_components, solver, condition,
    variance_threshold). Checks everything before reading the states.
    """
    from rsdyn.store import open_group

    group = open_group(store_path)
    condition = settings.get("condition", "original")
    if condition not in group:
        raise ValueError(
            f"The capture at {store_path} has no {condition!r} array; it holds "
            f"{', '.join(sorted(name for name, _ in group.arrays()))}."
        )
    array = group[condition]
    if array.ndim != 3:
        raise ValueError(f"The capture's {condition!r} array must be (N, 2L, D); got shape {array.shape}.")
    check_pca_settings(settings, *array.shape)
    return pca_of_states(
        array[...],
        settings["n_components"],
        settings.get("solver", "auto"),
        settings.get("variance_threshold", 0.9),
    )


def pca_attrs(store_path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes of ``pca.zarr``: provenance from the capture, the settings and the solver run."""
    from rsdyn.store import open_group

    group = open_group(store_path)
    condition = settings.get("condition", "original")
    n_samples, n_sublayers, d_model = group[condition].shape
    attrs = {key: group.attrs[key] for key in ("model_name", "model_id", "n_layers", "d_model", "sublayer_names") if key in group.attrs}
    attrs.update(
        condition=condition,
        n_components=settings["n_components"],
        variance_threshold=settings.get("variance_threshold", 0.9),
        solver=choose_solver(n_samples * n_sublayers, d_model, settings["n_components"], settings.get("solver", "auto")),
        n_samples=n_samples,
        ev_definition="1 - ||X_s - recon_k(X_s)||^2 / ||X_s - mean(X_s)||^2 per sublayer s",
    )
    return attrs


def _quarter(n: int) -> int:
    """How many sublayers make the first (or last) quarter of ``n``: ceil(n / 4), at least 1."""
    return max(1, -(-n // 4))


def summary_fig4_pca(pca: Mapping[str, np.ndarray], threshold: float = 0.9) -> dict[str, dict[str, Any]]:
    """summary.json rows of Fig. 4 A-C from the arrays of ``pca.zarr``.

    Each row is ``{value, paper, definition}``. "Early" and "late" are the first and the
    last quarter of the 2L sublayers (ceil(2L/4) each); medians skip sublayers without
    variance (their R^2 is undefined, NaN). Component counts not reached within the K
    stored components count as infinite and are reported as the string ``">K"``.
    """
    curve = np.asarray(pca["ev_per_sublayer_curve"], dtype=np.float64)
    n_sublayers, n_components = curve.shape
    quarter = _quarter(n_sublayers)
    defined = ~np.isnan(curve[:, -1])  # a sublayer without variance (e.g. one shared last token) has no R^2
    needed = components_needed(curve, threshold).astype(np.float64)
    needed[needed < 0] = np.inf
    needed[~defined] = np.nan
    pooled = components_needed(np.cumsum(pca["explained_variance_ratio"]), threshold)
    percent = round(100 * threshold)

    def count(value: float):
        return f">{n_components}" if not np.isfinite(value) else float(value)

    return {
        "pca_components_for_90pct_pooled": {
            "value": f">{n_components}" if pooled < 0 else int(pooled),
            "paper": "not reported (Fig. 4B curve)",
            "definition": f"Fig. 4B: fewest principal components whose cumulative explained variance ratio of the pooled, centred (N*2L) x D matrix reaches {percent} %.",
        },
        "pca_components_for_90pct_early": {
            "value": count(np.nanmedian(needed[:quarter])),
            "paper": "more components in early sublayers",
            "definition": f"Fig. 4C: median over the first quarter of sublayers of the fewest pooled PCs k with per-sublayer R^2 = 1 - ||X_s - recon_k(X_s)||^2 / ||X_s - mean(X_s)||^2 >= {threshold}.",
        },
        "pca_components_for_90pct_late": {
            "value": count(np.nanmedian(needed[-quarter:])),
            "paper": "fewer components in late sublayers",
            "definition": "Fig. 4C: the same median over the last quarter of sublayers.",
        },
        "pca_ev_per_sublayer_early": {
            "value": float(np.nanmedian(curve[:quarter, -1])),
            "paper": "lower in early sublayers",
            "definition": f"Fig. 4C: median over the first quarter of sublayers of the per-sublayer R^2 with all {n_components} pooled PCs.",
        },
        "pca_ev_per_sublayer_late": {
            "value": float(np.nanmedian(curve[-quarter:, -1])),
            "paper": "higher in late sublayers",
            "definition": f"Fig. 4C: median over the last quarter of sublayers of the per-sublayer R^2 with all {n_components} pooled PCs.",
        },
    }
