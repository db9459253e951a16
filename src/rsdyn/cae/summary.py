"""summary.json rows of Fig. 3 (the compressing autoencoder), from ``cae/embedding.zarr``.

Every number is a statistic of the trained CAE averaged over the training seeds
(``cae.seeds``). Rows that compare carry a 95 % percentile interval over resamples that
draw the training seeds with replacement, then the test sequences with replacement
(``rsdyn.cae.metrics.resample_seeds_and_sequences``), so that training variance is inside
the interval, and a verdict (``rsdyn.core.verdicts``).

"Early" and "late" are the first and the last quarter of the sublayers (of the
transitions for step distances) for the rows kept from before, and the first and the
last third for the across-sequence explained variance, ceil(n / part) each.

The judged reading of the CAE's explained variance is the one across sequences
(``ev_across``): 1 - sum_i ||x_is - y_is||^2 / sum_i ||x_is - m_s||^2 with m_s the
sublayer's training-set mean, so the sublayer-mean predictor scores exactly 0 and a
positive value means the CAE beats it. The statistics are public functions of the
stored arrays, sequence weights and seed indices (``across_ev_statistics``,
``block_ev_statistics``, ``step_ratio_statistic``) for callers outside this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rsdyn.cae.metrics import (
    NEGLIGIBLE_RELATIVE_VARIANCE,
    early_late,
    ev_across_sequences,
    ev_block,
    group_size,
    resample_seeds_and_sequences,
    step_ratio,
    sublayers_with_variance,
)
from rsdyn.core.verdicts import DEFAULT_RESAMPLES, comparison_row, row

#: early/late group of the rows kept from the single-seed CAE (block EV, step ratio, references)
QUARTER = 4
#: early/late group of the across-sequence explained variance
THIRD = 3
#: resamples evaluated together (bounds the memory of the (resamples x sequences) weights)
RESAMPLE_CHUNK = 256


def across_ev_statistics(arrays: Mapping[str, np.ndarray], weights=None, seeds=None) -> dict[str, np.ndarray]:
    """Across-sequence explained variance statistics of the CAE and of the sublayer-mean
    predictor for sequence ``weights`` and seed indices ``seeds`` (see
    ``rsdyn.cae.metrics``; 2-D for a batch of resamples): ``early``, ``late`` (median of
    EV_s over the first / last third of sublayers), ``late_minus_early``,
    ``minus_mean_predictor`` (median over all sublayers of EV_s(CAE) - EV_s(mean
    predictor)) and ``fraction_beating`` (share of sublayers with EV_s(CAE) above the
    predictor's)."""
    sst = arrays["mean_predictor_sse"]
    cae = ev_across_sequences(arrays["reconstruction_sse"], sst, weights, seeds)
    baseline = ev_across_sequences(sst[None], sst, weights)
    early, late = early_late(cae, THIRD)
    difference = cae - baseline
    with np.errstate(invalid="ignore"):
        beating = np.sum(difference > 0, axis=-1) / np.sum(~np.isnan(difference), axis=-1)
    return {"early": early, "late": late, "late_minus_early": late - early,
            "minus_mean_predictor": _median(difference), "fraction_beating": beating}


def block_ev_statistics(arrays: Mapping[str, np.ndarray], weights=None, seeds=None) -> dict[str, np.ndarray]:
    """The literal block explained variance (``rsdyn.cae.metrics.ev_block``) for sequence
    ``weights`` and seed indices ``seeds``: ``early``, ``late`` (median over the first /
    last quarter of sublayers), ``late_minus_early``, and ``minus_mean_predictor_early`` /
    ``_late`` (the same medians of the per-sublayer difference from the sublayer-mean
    predictor's block EV)."""
    cae = ev_block(arrays["state_moments"], arrays["residual_moments"], weights, seeds)
    baseline = ev_block(arrays["state_moments"], arrays["mean_predictor_moments"][None], weights)
    early, late = early_late(cae, QUARTER)
    base_early, base_late = early_late(cae - baseline, QUARTER)
    return {"early": early, "late": late, "late_minus_early": late - early,
            "minus_mean_predictor_early": base_early, "minus_mean_predictor_late": base_late}


def step_ratio_statistic(arrays: Mapping[str, np.ndarray], weights=None, seeds=None) -> np.ndarray:
    """Mean 2-D step over the last quarter of transitions / over the first, per seed, averaged
    over the chosen seeds (``rsdyn.cae.metrics.step_ratio``)."""
    return step_ratio(arrays["step_distance_per_sequence"], weights, seeds, part=QUARTER)


def resampled_statistics(statistic: Callable[..., Any], arrays: Mapping[str, np.ndarray], n_resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0) -> Any:
    """``statistic(arrays, weights, seeds)`` over ``n_resamples`` seeded resamples of the
    training seeds, then the test sequences; a dict of (R,) arrays for a statistic that
    returns a dict, else an (R,) array. Evaluated ``RESAMPLE_CHUNK`` resamples at a time."""
    n_seeds, n_sequences = np.shape(arrays["reconstruction_sse"])[:2]
    seeds, weights = resample_seeds_and_sequences(n_seeds, n_sequences, n_resamples, seed)
    parts = [statistic(arrays, weights[start : start + RESAMPLE_CHUNK], seeds[start : start + RESAMPLE_CHUNK])
             for start in range(0, n_resamples, RESAMPLE_CHUNK)]
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)


def resampled_text(n_resamples: int, seed: int, n_seeds: int) -> str:
    """The ``resampled`` text of the CAE's comparing rows."""
    return f"{n_seeds} training seeds, then test sequences, each with replacement ({n_resamples} resamples, seed {seed})"


def _median(values: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN when all are NaN)."""
    return early_late(values, 1)[0]


def _mean_over_seeds(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(arrays[name], dtype=np.float64).mean(axis=0)


def _across_rows(arrays, samples, label: str) -> dict[str, dict[str, Any]]:
    value = across_ev_statistics(arrays)
    definition = (
        "Fig. 3D, judged reading: median over the {which} third of sublayers of the across-sequence explained variance "
        "EV_s = 1 - sum_i ||x_is - y_is||^2 / sum_i ||x_is - m_s||^2 of the CAE's test reconstructions, m_s the sublayer's "
        "training-set mean (the sublayer-mean predictor scores exactly 0), averaged over training seeds."
    )
    beats = "> 0 (the CAE beats the sublayer-mean predictor, whose across-sequence EV is 0)"
    return {
        "cae_ev_across_early": comparison_row(float(value["early"]), beats, definition.format(which="first"), samples["early"], ">", label),
        "cae_ev_across_late": comparison_row(float(value["late"]), beats, definition.format(which="last"), samples["late"], ">", label),
        "cae_ev_across_late_minus_early": comparison_row(
            float(value["late_minus_early"]), "> 0 (explained variance rises with depth)",
            "Fig. 3D: cae_ev_across_late - cae_ev_across_early.", samples["late_minus_early"], ">", label),
        "cae_ev_across_minus_mean_predictor": comparison_row(
            float(value["minus_mean_predictor"]), "> 0 (the CAE's reconstruction beats the trivial baseline)",
            "Median over all sublayers of the CAE's across-sequence EV_s minus that of the sublayer-mean predictor (every "
            "test state predicted by its sublayer's training-set mean), averaged over training seeds.",
            samples["minus_mean_predictor"], ">", label),
        "cae_sublayers_beating_mean_predictor": row(
            float(value["fraction_beating"]), "not reported (descriptive)",
            "Share of sublayers whose across-sequence EV_s of the CAE (averaged over training seeds) exceeds that of the "
            "sublayer-mean predictor (0)."),
    }


def _block_rows(arrays, samples, label: str) -> dict[str, dict[str, Any]]:
    value = block_ev_statistics(arrays)
    definition = (
        "Fig. 3D: median over the {which} quarter of sublayers of the block-variance explained variance of the CAE "
        "reconstruction on the test set, 1 - var(X_s - Y_s) / var(X_s), var over all n x D entries of sublayer s's test "
        "block (one grand mean), the paper's words read plainly; averaged over training seeds."
    )
    baseline = (
        "Median over the {which} quarter of sublayers of the CAE's block-variance EV minus that of the sublayer-mean "
        "predictor (every test state predicted by its sublayer's training-set mean), averaged over training seeds."
    )
    beats = "> 0 (the CAE beats the sublayer-mean predictor)"
    return {
        "cae_ev_block_early": row(float(value["early"]), "lower early (jump after the first sublayers, then plateau)", definition.format(which="first")),
        "cae_ev_block_late": row(float(value["late"]), "higher late (slow rise to the end)", definition.format(which="last")),
        "cae_ev_block_late_minus_early": comparison_row(
            float(value["late_minus_early"]), "> 0 (explained variance rises: a jump after the first sublayers, a slow rise later)",
            "Fig. 3D: cae_ev_block_late - cae_ev_block_early.", samples["late_minus_early"], ">", label),
        "cae_ev_block_minus_mean_predictor_early": comparison_row(
            float(value["minus_mean_predictor_early"]), beats, baseline.format(which="first"), samples["minus_mean_predictor_early"], ">", label),
        "cae_ev_block_minus_mean_predictor_late": comparison_row(
            float(value["minus_mean_predictor_late"]), beats, baseline.format(which="last"), samples["minus_mean_predictor_late"], ">", label),
    }


def _reference_rows(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    ev = _mean_over_seeds(arrays, "ev_per_sublayer")
    ev[~sublayers_with_variance(arrays["test_variance_per_sublayer"])] = np.nan
    early, late = early_late(ev, QUARTER)
    pooled_early, pooled_late = early_late(_mean_over_seeds(arrays, "ev_per_sublayer_pooled_reference"), QUARTER)
    threshold = f"{NEGLIGIBLE_RELATIVE_VARIANCE:g}"
    grey = "not reported (grey reference of Fig. 3D)"
    return {
        "cae_ev_own_mean_early": row(
            float(early), grey,
            "Fig. 3D (grey reference): median over the first quarter of sublayers of the test-set R^2 against each unit's own mean "
            "in the sublayer, 1 - ||X_s - Y_s||^2 / ||X_s - mean(X_s)||^2 (averaged over training seeds), skipping sublayers whose "
            f"variance across test sequences is below {threshold} of the mean sublayer variance.",
        ),
        "cae_ev_own_mean_late": row(float(late), grey, "Fig. 3D (grey reference): the same median over the last quarter of sublayers."),
        "cae_ev_pooled_reference_early": row(
            float(pooled_early), grey,
            "Fig. 3D (grey reference): median over the first quarter of sublayers of 1 - ||X_s - Y_s||^2 / ||X_s - m||^2 with m "
            "the pooled mean of all test states (averaged over training seeds), i.e. the share of the sublayer's spread around "
            "the pooled mean, its depth offset included, that the reconstruction recovers.",
        ),
        "cae_ev_pooled_reference_late": row(float(pooled_late), grey, "Fig. 3D (grey reference): the same median over the last quarter of sublayers."),
        "cae_test_r2_pooled": row(
            float(np.mean(arrays["test_r2_pooled"])), "not reported",
            "Test-set R^2 of the CAE reconstruction over all states, 1 - sum ||x - y||^2 / sum ||x - m||^2 with m the pooled "
            "mean of all test states, averaged over training seeds.",
        ),
    }


def summary_fig3(cae: Mapping[str, np.ndarray], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """summary.json rows of Fig. 3 from the arrays of ``cae/embedding.zarr``. Comparing rows
    resample training seeds, then test sequences, ``n_resamples`` times with ``seed``
    (``summary.bootstrap``, ``summary.seed``)."""
    n_seeds = int(np.shape(cae["reconstruction_sse"])[0])
    label = resampled_text(n_resamples, seed, n_seeds)
    rows: dict[str, dict[str, Any]] = {}
    rows.update(_block_rows(cae, resampled_statistics(block_ev_statistics, cae, n_resamples, seed), label))
    rows.update(_across_rows(cae, resampled_statistics(across_ev_statistics, cae, n_resamples, seed), label))
    rows["cae_step_distance_late_over_early"] = comparison_row(
        float(step_ratio_statistic(cae)), "> 1 (steps grow with depth: trajectories straighten and speed up)",
        "Fig. 3C: mean 2-D distance between successive sublayers over the last quarter of transitions divided by that over "
        f"the first quarter ({group_size(np.shape(cae['step_distance_per_sequence'])[-1], QUARTER)} transitions each; test "
        "sequences), per training seed, averaged over seeds.",
        resampled_statistics(step_ratio_statistic, cae, n_resamples, seed), ">", label, null=1.0,
    )
    rows.update(_reference_rows(cae))
    return rows
