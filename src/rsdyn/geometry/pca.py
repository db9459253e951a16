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
most of the variance), and the within view of :mod:`rsdyn.geometry.sublayer_pca` (sublayer s's
own PCA: participation ratio and components for 90 % of its own variance).

Memory: the capture is read in sample blocks (pooled mean, then the D x D Gram) and in
sublayer groups (everything per sublayer), never as a float64 copy of the whole
(N * 2L, D) matrix, when the ``gram`` solver runs on a matrix taller than wide (what
``auto`` picks at the paper's 64,000 x 4096). ``full``, ``randomized`` and the N x N
Gram of a wide matrix hold the centred matrix in float64.

Uncertainty: the stage draws ``n_resamples`` seeded bootstrap resamples of the N
sequences (:func:`rsdyn.core.verdicts.bootstrap_indices`) and stores, per resample, the
pooled-PC R^2 and component counts of every sublayer (pooled PCs and mean held fixed,
the sums over sequences re-weighted) and the within-sublayer participation ratio and
component count of the first and last quarter of sublayers (each resample's own spectra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.core.jobs import progress
from rsdyn.core.linalg import choose_solver, fit_pca_streamed, sublayer_groups
from rsdyn.geometry.sublayer_pca import (
    components_for_fraction,
    numerical_rank,
    own_spectrum,
    participation_ratio,
    resample_counts,
    resampled_spectra,
)

# --------------------------------------------------------------------------- streamed reads


def components_needed(curve: np.ndarray, threshold: float) -> np.ndarray:
    """Smallest k with ``curve[..., k-1] >= threshold`` along the last axis; -1 where never reached."""
    reached = curve >= threshold
    first = np.argmax(reached, axis=-1) + 1
    return np.where(reached.any(axis=-1), first, -1).astype(np.int32)


def quarter_sublayers(n_sublayers: int) -> np.ndarray:
    """The first and last quarter of the sublayers (ceil(2L / 4) each, "early" and "late"): int (2q,)."""
    quarter = quarter_size(n_sublayers)
    return np.unique(np.concatenate([np.arange(quarter), np.arange(n_sublayers - quarter, n_sublayers)]))


def within_subsample_size(n_samples: int) -> int:
    """m of the within view's m-out-of-n subsamples: half the sequences (at least 2)."""
    return max(2, n_samples // 2)


def quarter_size(n: int) -> int:
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
    within_counts: np.ndarray | None = None,
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
    ``components_for_90_within_bootstrap`` (B, len(bootstrap_sublayers)), drawn with
    ``within_counts`` (m-out-of-n 0/1 subsamples; the bootstrap ``counts`` when None).
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
    bar = progress(total=n_sublayers, desc="pca per sublayer", unit="sublayer", leave=False)
    for start, group in sublayer_groups(states):
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
                bar.update(1)
                continue
            resampled_mean = weights @ own / n_samples  # (B, D), offset of each resample's mean
            resampled_own = weights @ own_ss - n_samples * np.einsum("bd,bd->b", resampled_mean, resampled_mean)
            curve = _pooled_curve(weights @ squared_scores, weights @ pooled_ss, resampled_own)
            out["ev_per_sublayer_bootstrap"][:, s] = curve[:, -1]
            out["n_components_90_bootstrap"][:, s] = components_needed(curve, threshold)
            if s in resampled:
                within_spectra[:, resampled.index(s)] = resampled_spectra(block, counts if within_counts is None else within_counts)
            bar.update(1)
    bar.close()
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
    sublayer's own PCA, :mod:`rsdyn.geometry.sublayer_pca`): ``spectrum_within``,
    ``participation_ratio``, ``components_for_90_within``, ``rank_within``. Bootstrap over
    sequences (``n_resamples`` seeded resamples, none when 0): see :func:`sublayer_pass`;
    ``bootstrap_sublayers`` lists the sublayers of the within-view resamples (the first and
    last quarter).
    """
    n_samples, n_sublayers, _ = states.shape
    fit = fit_pca_streamed(states, n_components, solver)
    counts = None
    resampled = quarter_sublayers(n_sublayers)
    within_counts = None
    if n_resamples > 0:
        from rsdyn.core.resampling import subsample_weights
        from rsdyn.core.verdicts import bootstrap_indices

        counts = resample_counts(bootstrap_indices(n_samples, n_resamples, seed), n_samples)
        # the within view's dimensionality grows with the number of rows: m-out-of-n subsamples, not the bootstrap
        within_counts = subsample_weights(n_samples, within_subsample_size(n_samples), n_resamples, seed).astype(np.int64)
    per_sublayer = sublayer_pass(states, fit["mean"], fit["components"], threshold, counts, resampled, within_counts)
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
        arrays["within_subsample_size"] = np.int64(within_subsample_size(n_samples))
    return {key: value.astype(np.float32) if key in _FLOAT32 else np.asarray(value) for key, value in arrays.items()}


# --------------------------------------------------------------------------- summary rows


