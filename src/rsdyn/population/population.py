"""Population stage: jPCA of the residual stream over depth and its TME null (``population.zarr``).

For each condition (original and token-shuffled text):

- ``jpca``: jPCA of all sublayers (``rsdyn.population.jpca``), and the same for each depth window
  (``window_{i}``); each with ``tme_jpca_ratio`` (n_surrogates,), the ratio recomputed
  on tensor-maximum-entropy surrogates of its k-PC scores (N, S, k) (``rsdyn.population.tme``), and
  ``tme_percentile``, the percentile of the observed ratio among them;
- ``jpca_deviations``, ``window_{i}_deviations``: the same for the deviations of each
  sequence from the mean over sequences at each sublayer (Churchland et al. subtract
  this cross-condition mean before jPCA). When most sequences end with the same token,
  the pooled states are dominated by the one trajectory they share; the deviations ask
  whether the sequence-specific part rotates;
- ``tme_rotations``: R of every unit's sample-mean trajectory (``rsdyn.units.rotations``)
  recomputed on ``tme.unit_surrogates`` TME surrogates of the full (N, S, D) states
  (only their sample means are drawn, exactly; see ``rsdyn.population.tme``): per unit the null's
  mean, std, q025, q975, percentile, two-sided p-value and Benjamini-Hochberg
  discovery (``fdr``), ``samples`` (n_surrogates, D), and ``abs_mean_samples``, the
  mean over units of |R| of each surrogate.

The surrogates of the k-PC scores go through the whole jPCA definition (centring,
gradient, both fits and their R^2), computed from each surrogate's moments
(:func:`surrogate_null`; :func:`surrogate_jpca_ratios` is the same on one whole
surrogate, the reference the tests hold it to); within k dimensions re-fitting the PCs
only rotates the scores, which leaves the ratio unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.population.jpca import jpca_of_scores, pc_scores, ratios_from_moments
from rsdyn.population.settings import DEFAULT_JPCA, DEFAULT_TME, resolve_windows
from rsdyn.population.tme import (
    TMEModel,
    fit_tme,
    sample_tme_factors,
    sample_tme_mode0_mean,
)
from rsdyn.units.rotations import bh_significant, null_summary, rotation_number

CONDITIONS = ("original", "shuffled")

LOG = logging.getLogger("rsdyn.population")


#: arrays of a jPCA result written to the store (the PCA mean and components of the
#: whole-depth fit too)
_JPCA_ARRAYS = (
    "m_best", "m_skew", "r2_best", "r2_skew", "jpca_ratio", "r2_best_literal", "r2_skew_literal", "jpca_ratio_literal",
    "frequencies", "turns_per_sublayer", "planes", "projection",
)


#: random streams of the TME surrogates of the deviation variant (the states' use 0, 1, ...)
DEVIATION_STREAM = 100


def deviations(states: np.ndarray) -> np.ndarray:
    """The states minus their mean over samples at each sublayer, (N, S, D): what is left
    when the trajectory every sequence shares is removed (the cross-condition mean
    subtraction of Churchland et al. 2012)."""
    return states - states.mean(axis=0, keepdims=True)


def soft_normalise(states: np.ndarray) -> np.ndarray:
    """Churchland et al.'s soft normalisation of states (N, S, D): each unit divided by its
    range over all N x S states plus a constant, here the median range over units (the
    constant keeps near-constant units from being blown up; the median sets it on the
    stream's own scale, where a firing-rate study adds 5 spikes/s)."""
    flat = np.asarray(states, dtype=np.float64).reshape(-1, states.shape[-1])
    ranges = flat.max(axis=0) - flat.min(axis=0)
    return np.asarray(states, dtype=np.float64) / (ranges + np.median(ranges))


def percentile_of(observed: float, null: np.ndarray) -> float:
    """100 x (#null < observed + 0.5 #null == observed) / n, NaN draws left out."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    return float(100.0 * (np.sum(null < observed) + 0.5 * np.sum(null == observed)) / null.size)


def surrogate_jpca_ratios(surrogate: np.ndarray) -> tuple[float, float]:
    """jPCA ratio and its literal variant of one surrogate (N, S, k), through the whole definition."""
    n_samples, n_sublayers, k = surrogate.shape
    flat = surrogate.reshape(-1, k)
    centred = flat - flat.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    scores = (centred @ vectors[:, ::-1]).reshape(n_samples, n_sublayers, k)
    result = jpca_of_scores(scores)
    return float(result["jpca_ratio"]), float(result["jpca_ratio_literal"])


def surrogate_null(model: TMEModel, n_surrogates: int, seed: int, stream: int) -> np.ndarray:
    """The jPCA ratio and its literal variant of each TME surrogate of scores (N, S, k),
    (n_surrogates, 2): what :func:`surrogate_jpca_ratios` gives for each, from the
    surrogates' moments (:func:`rsdyn.population.jpca.ratios_from_moments`).

    A surrogate is X = M + U_0 W along mode 0 (:func:`rsdyn.population.tme.sample_tme_factors`)
    with U_0 of orthonormal columns, so its sums over sequences of products need only W
    and P = U_0^T M: sum_i X X^T = sum_i M M^T + sum_a (P W^T + W P^T + W W^T) per sublayer,
    and the same for the derivative over sublayers (np.gradient is linear: its factors are
    G W, G the gradient operator). The moments are taken about the mean tensor's pooled
    mean and mean derivative, a shift that changes no centred moment."""
    n0, n1, k = model.shape
    n_rows = float(n0 * n1)
    gradient = np.gradient(np.eye(n1), axis=0)  # gradient(v) = G @ v along the sublayers
    U0 = model.eigenvectors[0]
    mean = model.mean
    derivative_mean = np.gradient(mean, axis=1)
    shift = derivative_mean.reshape(-1, k).mean(axis=0)
    fixed_x = (mean - mean.reshape(-1, k).mean(axis=0)).reshape(n0, -1)  # M, shifted (n0, n1 k)
    fixed_d = (derivative_mean - shift).reshape(n0, -1)
    P, Q = ((U0.T @ part).reshape(-1, k) for part in (fixed_x, fixed_d))
    u = U0.sum(axis=0)  # U_0^T 1
    flat_x, flat_d = fixed_x.reshape(-1, k), fixed_d.reshape(-1, k)
    base = {"xx": flat_x.T @ flat_x, "xd": flat_x.T @ flat_d, "dd": flat_d.T @ flat_d}
    sums = {"x": flat_x.sum(axis=0), "d": flat_d.sum(axis=0)}
    parts = []
    for W, Wd in sample_tme_factors(model, n_surrogates, seed=seed, stream=stream, mode1=gradient):
        m = W.shape[0]
        w, wd = W.reshape(m, -1, k), Wd.reshape(m, -1, k)
        wt, wdt = np.swapaxes(w, 1, 2), np.swapaxes(wd, 1, 2)
        S_xx = base["xx"] + P.T @ w + wt @ P + wt @ w
        S_xd = base["xd"] + P.T @ wd + wt @ Q + wt @ wd
        S_dd = base["dd"] + Q.T @ wd + wdt @ Q + wdt @ wd
        s_x = sums["x"] + np.einsum("a,majk->mk", u, W)
        s_d = sums["d"] + np.einsum("a,majk->mk", u, Wd)
        C = S_xx - s_x[:, :, None] * s_x[:, None, :] / n_rows
        B = S_xd - s_x[:, :, None] * s_d[:, None, :] / n_rows
        E = S_dd - s_d[:, :, None] * s_d[:, None, :] / n_rows
        drift = np.sum((s_d / n_rows + shift) ** 2, axis=1) * n_rows
        ratios = ratios_from_moments(C, B, E, drift)
        parts.append(np.stack([ratios["jpca_ratio"], ratios["jpca_ratio_literal"]], axis=1))
    return np.concatenate(parts, axis=0)


def tme_model_summary(model: TMEModel) -> dict[str, Any]:
    """The fit's diagnostics: Newton iterations and the relative error of the fitted
    marginal eigenvalues (max over modes)."""
    return {"tme_iterations": np.int64(model.iterations), "tme_constraint_error": np.float64(model.constraint_error)}


def jpca_with_tme(scores: np.ndarray, tme_settings: Mapping[str, Any], stream: int) -> dict[str, Any]:
    """jPCA of centred scores (N, S, k) and its TME null (see the module docstring)."""
    result = jpca_of_scores(scores)
    model = fit_tme(scores, tme_settings["floor"], tme_settings["tol"], tme_settings["max_iter"])
    null = surrogate_null(model, tme_settings["n_surrogates"], tme_settings["seed"], stream)  # (n, 2)
    out = {name: np.asarray(result[name]) for name in _JPCA_ARRAYS}
    out.update(
        scores=scores.astype(np.float32),
        tme_jpca_ratio=null[:, 0],
        tme_percentile=np.float64(percentile_of(result["jpca_ratio"], null[:, 0])),
        tme_jpca_ratio_literal=null[:, 1],
        tme_percentile_literal=np.float64(percentile_of(result["jpca_ratio_literal"], null[:, 1])),
        **tme_model_summary(model),
    )
    return out


def tme_rotations(states: np.ndarray, tme_settings: Mapping[str, Any], fdr_q: float = 0.05) -> dict[str, Any]:
    """Per-unit R of the sample-mean trajectories against TME surrogates of the states."""
    observed = rotation_number(np.ascontiguousarray(states.mean(axis=0).T))
    model = fit_tme(states, tme_settings["floor"], tme_settings["tol"], tme_settings["max_iter"])
    means = sample_tme_mode0_mean(model, tme_settings["unit_surrogates"], seed=tme_settings["seed"])  # (n, S, D)
    null = rotation_number(np.ascontiguousarray(means.transpose(0, 2, 1)))  # (n, D)
    out = {"observed": observed, **null_summary(observed, null)}
    out["fdr"] = bh_significant(out["pvalue"], fdr_q)
    out["samples"] = null.astype(np.float32)
    out["abs_mean_samples"] = np.abs(null).mean(axis=1)
    out["abs_mean_percentile"] = np.float64(percentile_of(float(np.abs(observed).mean()), out["abs_mean_samples"]))
    out.update(tme_model_summary(model))
    return out


def population_steps(n_windows: int) -> int:
    """The fits :func:`condition_population` reports to ``on_step``: jPCA with its TME null of
    the states and of their deviations, whole depth and per window, then the per-unit TME."""
    return 2 * (1 + n_windows) + 1


def condition_population(
    states: np.ndarray, jpca_settings: Mapping[str, Any], tme_settings: Mapping[str, Any], fdr_q: float = 0.05,
    on_step=None,
) -> dict[str, Any]:
    """Every array of one condition's group of ``population.zarr``, from its states (N, S, D);
    ``on_step()`` is called after each of its :func:`population_steps` fits (progress)."""
    step = on_step or (lambda: None)
    jpca_settings = {**DEFAULT_JPCA, **jpca_settings}
    tme_settings = {**DEFAULT_TME, **tme_settings}
    raw = np.asarray(states, dtype=np.float64)
    states = soft_normalise(raw) if jpca_settings.get("normalize", "soft") == "soft" else raw
    k = int(jpca_settings["k"])
    windows = resolve_windows(jpca_settings["windows"], states.shape[1])
    began = time.perf_counter()
    scores, pca = pc_scores(states, k)
    out: dict[str, Any] = {"jpca": {**pca, **jpca_with_tme(scores, tme_settings, stream=0)}}
    step()
    deviation_scores, deviation_pca = pc_scores(deviations(states), k)
    out["jpca_deviations"] = {**deviation_pca, **jpca_with_tme(deviation_scores, tme_settings, stream=DEVIATION_STREAM)}
    step()
    LOG.info("jPCA of all sublayers (states and deviations) and its TME null: %.1f s", time.perf_counter() - began)
    for index, (start, stop) in enumerate(windows):
        window = states[:, start:stop]
        sublayers = np.array([start, stop])
        out[f"window_{index}"] = {"sublayers": sublayers, **jpca_with_tme(pc_scores(window, k)[0], tme_settings, stream=index + 1)}
        step()
        out[f"window_{index}_deviations"] = {
            "sublayers": sublayers,
            **jpca_with_tme(pc_scores(deviations(window), k)[0], tme_settings, stream=DEVIATION_STREAM + index + 1),
        }
        step()
    LOG.info("jPCA of %d depth windows: %.1f s in all", len(windows), time.perf_counter() - began)
    out["tme_rotations"] = tme_rotations(raw, tme_settings, fdr_q)  # per-unit R: on the states as captured
    step()
    LOG.info(
        "per-unit R against TME (%d Newton steps, constraint error %.1e): %.1f s in all",
        int(out["tme_rotations"]["tme_iterations"]), float(out["tme_rotations"]["tme_constraint_error"]), time.perf_counter() - began,
    )
    return out


