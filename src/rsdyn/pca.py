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

Two views of dimensionality per sublayer (Fig. 4C): the pooled view above (how many of
the *pooled* axes sublayer s needs; the pooled axes follow the late sublayers, which hold
most of the variance), and the within view of :mod:`rsdyn.sublayer_pca` (sublayer s's
own PCA: participation ratio and components for 90 % of its own variance).

Memory: the capture is read in sample blocks (pooled mean, then the D x D Gram) and in
sublayer groups (everything per sublayer), never as a float64 copy of the whole
(N * 2L, D) matrix, when the ``gram`` solver runs on a matrix taller than wide (what
``auto`` picks at the paper's 64,000 x 4096). ``full``, ``randomized`` and the N x N
Gram of a wide matrix hold the centred matrix in float64.

Uncertainty: the stage draws ``n_resamples`` seeded bootstrap resamples of the N
sequences (:func:`rsdyn.verdicts.bootstrap_indices`) and stores, per resample, the
pooled-PC R^2 and component counts of every sublayer (pooled PCs and mean held fixed,
the sums over sequences re-weighted) and the within-sublayer participation ratio and
component count of the first and last quarter of sublayers (each resample's own spectra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from rsdyn.sublayer_pca import (
    components_for_fraction,
    numerical_rank,
    own_spectrum,
    participation_ratio,
    resample_counts,
    resampled_spectra,
)

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


# --------------------------------------------------------------------------- streamed reads


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
    for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 4):
        block = np.asarray(states[start : start + step])
        if not np.isfinite(block).all():
            raise ValueError("PCA input contains NaN or infinite values; the capture must be finite.")
        yield block


def _row_chunks(rows: np.ndarray):
    """Float64 copies of consecutive row chunks of a 2-D block, about ``_CHUNK_BYTES`` each."""
    step = max(1, _CHUNK_BYTES // (8 * rows.shape[1]))
    for start in range(0, len(rows), step):
        yield rows[start : start + step].astype(np.float64)


def _sublayer_groups(states):
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


def components_needed(curve: np.ndarray, threshold: float) -> np.ndarray:
    """Smallest k with ``curve[..., k-1] >= threshold`` along the last axis; -1 where never reached."""
    reached = curve >= threshold
    first = np.argmax(reached, axis=-1) + 1
    return np.where(reached.any(axis=-1), first, -1).astype(np.int32)


def quarter_sublayers(n_sublayers: int) -> np.ndarray:
    """The first and last quarter of the sublayers (ceil(2L / 4) each, "early" and "late"): int (2q,)."""
    quarter = _quarter(n_sublayers)
    return np.unique(np.concatenate([np.arange(quarter), np.arange(n_sublayers - quarter, n_sublayers)]))


def _quarter(n: int) -> int:
    """How many sublayers make the first (or last) quarter of ``n``: ceil(n / 4), at least 1."""
    return max(1, -(-n // 4))


def _pooled_curve(captured, centred_ss, own_ss):
    """R^2 curve 1 - (||X - mu||^2 - sum_{j<=k} score_j^2) / ||X - mean(X)||^2 along the last axis."""
    residual = centred_ss[..., None] - np.cumsum(captured, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - residual / np.where(own_ss > 0, own_ss, np.nan)[..., None]


def sublayer_pass(
    states,
    mean: np.ndarray,
    components: np.ndarray,
    threshold: float = 0.9,
    counts: np.ndarray | None = None,
    bootstrap_sublayers=(),
) -> dict[str, np.ndarray]:
    """Everything of ``pca.zarr`` that is computed one sublayer at a time.

    ``states`` (N, 2L, D) (array or zarr array, read in sublayer groups), the pooled
    ``mean`` (D,) and ``components`` (K, D). Returns float64/int arrays:
    ``ev_per_sublayer_curve`` (2L, K) (pooled-PC R^2 with the first k PCs),
    ``projection`` (N, 2L, 2), ``spectrum_within`` (2L, min(N, D)) (own-covariance
    eigenvalues), ``participation_ratio``, ``components_for_90_within`` (smallest k for
    ``threshold`` of the sublayer's own variance; -1 without variance), ``rank_within``
    (2L,). With ``counts`` (B, N) (bootstrap draws per sequence): ``ev_per_sublayer_bootstrap``,
    ``n_components_90_bootstrap`` (B, 2L) (pooled PCs and mean held fixed) and, for the
    sublayers in ``bootstrap_sublayers``, ``participation_ratio_bootstrap`` and
    ``components_for_90_within_bootstrap`` (B, len(bootstrap_sublayers)).
    """
    n_samples, n_sublayers, d_model = states.shape
    components = np.asarray(components, dtype=np.float64)
    n_components = len(components)
    resampled = list(int(s) for s in bootstrap_sublayers)
    out = {
        "ev_per_sublayer_curve": np.zeros((n_sublayers, n_components)),
        "projection": np.zeros((n_samples, n_sublayers, 2)),
        "spectrum_within": np.zeros((n_sublayers, min(n_samples, d_model))),
    }
    if counts is not None:
        weights = np.asarray(counts, dtype=np.float64)
        n_resamples = len(weights)
        out["ev_per_sublayer_bootstrap"] = np.zeros((n_resamples, n_sublayers))
        out["n_components_90_bootstrap"] = np.zeros((n_resamples, n_sublayers), dtype=np.int32)
        within_spectra = np.zeros((n_resamples, len(resampled), min(n_samples, d_model)))
    progress = tqdm(total=n_sublayers, desc="pca per sublayer", leave=False)
    for start, group in _sublayer_groups(states):
        for offset in range(group.shape[1]):
            s = start + offset
            block = group[:, offset].astype(np.float64)
            centred = block - mean
            scores = centred @ components.T
            out["projection"][:, s] = scores[:, :2]
            squared_scores = scores**2
            pooled_ss = np.einsum("ij,ij->i", centred, centred)  # ||x - mu||^2 per sequence
            own = block - block.mean(axis=0)
            own_ss = np.einsum("ij,ij->i", own, own)  # ||x - mean_s||^2 per sequence
            out["ev_per_sublayer_curve"][s] = _pooled_curve(squared_scores.sum(axis=0), pooled_ss.sum(), own_ss.sum())
            out["spectrum_within"][s] = own_spectrum(block)
            if counts is None:
                progress.update(1)
                continue
            resampled_mean = weights @ own / n_samples  # (B, D), offset of each resample's mean
            resampled_own = weights @ own_ss - n_samples * np.einsum("bd,bd->b", resampled_mean, resampled_mean)
            curve = _pooled_curve(weights @ squared_scores, weights @ pooled_ss, resampled_own)
            out["ev_per_sublayer_bootstrap"][:, s] = curve[:, -1]
            out["n_components_90_bootstrap"][:, s] = components_needed(curve, threshold)
            if s in resampled:
                within_spectra[:, resampled.index(s)] = resampled_spectra(block, counts)
            progress.update(1)
    progress.close()
    spectrum = out["spectrum_within"]
    out["participation_ratio"] = participation_ratio(spectrum)
    out["components_for_90_within"] = components_for_fraction(spectrum, threshold)
    out["rank_within"] = numerical_rank(spectrum, n_samples, d_model)
    if counts is not None:
        out["participation_ratio_bootstrap"] = participation_ratio(within_spectra)
        out["components_for_90_within_bootstrap"] = components_for_fraction(within_spectra, threshold)
    return out


def ev_per_sublayer_curve(states: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Explained variance (R^2, see module docstring) of each sublayer with k = 1..K components.

    ``states`` is (N, S, D); returns (S, K): entry [s, k-1] is EV_s(k). Uses the
    orthonormality of the components: ||x - recon_k(x)||^2 = ||x - mu||^2 - sum_{j<=k} score_j^2,
    so one projection onto K components gives the whole curve.
    """
    return sublayer_pass(states, mean, components)["ev_per_sublayer_curve"]


def check_pca_settings(settings: Mapping[str, Any], n_samples: int, n_sublayers: int, d_model: int) -> None:
    """Raise one clear ValueError when the pca settings do not fit the capture's shape."""
    k = settings["n_components"]
    limit = min(n_samples * n_sublayers, d_model)
    if not 2 <= k <= limit:
        raise ValueError(
            f"pca.n_components = {k} does not fit the capture ({n_samples} x {n_sublayers} "
            f"states of dimension {d_model}); allowed is 2 to {limit}."
        )
    if n_samples < 2:
        raise ValueError(f"The capture holds {n_samples} sequence; the per-sublayer PCA needs at least 2.")
    threshold = settings.get("variance_threshold", 0.9)
    if not 0 < threshold < 1:
        raise ValueError(f"pca.variance_threshold = {threshold}; it must lie strictly between 0 and 1.")
    choose_solver(1, 1, 1, settings.get("solver", "auto"))


#: float32 arrays of pca.zarr (the others keep their dtype: components and mean float32 too, counts int32)
_FLOAT32 = (
    "mean", "components", "singular_values", "explained_variance", "explained_variance_ratio",
    "ev_per_sublayer", "ev_per_sublayer_curve", "projection", "spectrum_within", "participation_ratio",
    "ev_per_sublayer_bootstrap", "participation_ratio_bootstrap",
)


def pca_of_states(
    states,
    n_components: int,
    solver: str = "auto",
    threshold: float = 0.9,
    n_resamples: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every array of ``pca.zarr`` from the capture's (N, 2L, D) states (an array or a zarr array).

    Pooled view: ``mean`` (D,), ``components`` (K, D), ``singular_values``,
    ``explained_variance``, ``explained_variance_ratio`` (K,), ``ev_per_sublayer`` (2L,)
    (R^2 with all K components), ``ev_per_sublayer_curve`` (2L, K) (R^2 with the first k),
    ``n_components_90`` (2L,) (smallest k with R^2 >= ``threshold``; -1 if not within K;
    the name keeps 90 whatever the threshold, stored in the attributes),
    ``n_components_90_pooled`` (scalar, the same for the pooled cumulative ratio) and
    ``projection`` (N, 2L, 2), the PC1-PC2 scores of every state. Within view (each
    sublayer's own PCA, :mod:`rsdyn.sublayer_pca`): ``spectrum_within``,
    ``participation_ratio``, ``components_for_90_within``, ``rank_within``. Bootstrap over
    sequences (``n_resamples`` seeded resamples, none when 0): see :func:`sublayer_pass`;
    ``bootstrap_sublayers`` lists the sublayers of the within-view resamples (the first and
    last quarter).
    """
    n_samples, n_sublayers, _ = states.shape
    fit = fit_pca_streamed(states, n_components, solver)
    counts = None
    resampled = quarter_sublayers(n_sublayers)
    if n_resamples > 0:
        from rsdyn.verdicts import bootstrap_indices

        counts = resample_counts(bootstrap_indices(n_samples, n_resamples, seed), n_samples)
    per_sublayer = sublayer_pass(states, fit["mean"], fit["components"], threshold, counts, resampled)
    curve = per_sublayer["ev_per_sublayer_curve"]
    arrays = {key: fit[key] for key in ("mean", "components", "singular_values", "explained_variance", "explained_variance_ratio")}
    arrays.update(
        ev_per_sublayer=curve[:, -1],
        n_components_90=components_needed(curve, threshold),
        n_components_90_pooled=components_needed(np.cumsum(fit["explained_variance_ratio"]), threshold),
        **per_sublayer,
    )
    if counts is not None:
        arrays["bootstrap_sublayers"] = resampled.astype(np.int32)
    return {key: value.astype(np.float32) if key in _FLOAT32 else np.asarray(value) for key, value in arrays.items()}


def run_pca(store_path, settings: Mapping[str, Any], n_resamples: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Read ``settings['condition']`` from the capture at ``store_path`` and return ``pca_of_states``.

    ``settings`` is the run's ``pca`` section (n_components, solver, condition,
    variance_threshold); ``n_resamples`` and ``seed`` the bootstrap's (``summary.bootstrap``,
    ``summary.seed``). Checks everything before reading the states, which are read in
    blocks from the store (see the module docstring).
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
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 0:
        raise ValueError(f"summary.bootstrap = {n_resamples!r}; it must be an integer >= 0.")
    return pca_of_states(
        array,
        settings["n_components"],
        settings.get("solver", "auto"),
        settings.get("variance_threshold", 0.9),
        n_resamples,
        seed,
    )


def pca_attrs(store_path, settings: Mapping[str, Any], n_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Attributes of ``pca.zarr``: provenance from the capture, the settings, the solver run
    and the bootstrap (resamples, seed)."""
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
        bootstrap=int(n_resamples),
        bootstrap_seed=int(seed),
        ev_definition="1 - ||X_s - recon_k(X_s)||^2 / ||X_s - mean(X_s)||^2 per sublayer s",
        within_definition="eigenvalues of each sublayer's own covariance (N - 1 denominator); participation ratio "
        "(sum lambda)^2 / sum lambda^2; components for the variance threshold of the sublayer's own variance",
    )
    return attrs


# --------------------------------------------------------------------------- summary rows


def summary_fig4_pca(pca: Mapping[str, np.ndarray], threshold: float = 0.9, n_resamples: int = 200, seed: int = 0) -> dict[str, dict[str, Any]]:
    """summary.json rows of Fig. 4 A-C (see :func:`rsdyn.pca_summary.summary_fig4_pca`)."""
    from rsdyn.pca_summary import summary_fig4_pca as rows

    return rows(pca, threshold, n_resamples, seed)
