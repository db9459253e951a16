"""summary.json rows of Fig. 3 (the compressing autoencoder), from ``cae/embedding.zarr``.

"Early" and "late" are the first and the last quarter of the sublayers (of the
transitions for step distances), ceil(n/4) each. Rows that compare early with late carry
a 95 % percentile bootstrap interval over test sequences and a verdict
(``rsdyn.core.verdicts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.cae.metrics import NEGLIGIBLE_RELATIVE_VARIANCE, sublayers_with_variance
from rsdyn.core.verdicts import (
    DEFAULT_RESAMPLES,
    bootstrap,
    comparison_row,
    resampled_label,
    row,
)


def _median_ignoring_nan(values: np.ndarray) -> float:
    """np.nanmedian without its warning: NaN when every entry is NaN."""
    kept = values[~np.isnan(values)]
    return float(np.median(kept)) if kept.size else float("nan")


def quarter(n: int) -> int:
    """Size of the "early" and "late" groups of ``n`` sublayers or transitions: ceil(n / 4), at least 1."""
    return max(1, -(-n // 4))


def block_ev_late_minus_early(ev_block: np.ndarray) -> float:
    """Median block-variance EV over the last quarter of sublayers minus that over the first."""
    q = quarter(len(ev_block))
    return _median_ignoring_nan(ev_block[-q:]) - _median_ignoring_nan(ev_block[:q])


def step_ratio(distances: np.ndarray) -> float:
    """Mean 2-D step over the last quarter of transitions / over the first: distances (n, 2L-1)."""
    steps = np.asarray(distances, dtype=np.float64).mean(axis=0)
    q = quarter(len(steps))
    return float(np.mean(steps[-q:]) / np.mean(steps[:q]))


def _block_ev_rows(cae: Mapping[str, np.ndarray], n_resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    from rsdyn.cae.metrics import ev_block_from_sequence_stats

    ev = np.asarray(cae["ev_block_per_sublayer"], dtype=np.float64)
    q = quarter(len(ev))
    definition = (
        "Fig. 3D: median over the {which} quarter of sublayers of the block-variance explained variance of the CAE "
        "reconstruction on the test set, 1 - var(X_s - Y_s) / var(X_s), var over all n x D entries of sublayer s's test "
        "block (one grand mean), the paper's words read plainly."
    )
    rows = {
        "cae_ev_block_early": row(_median_ignoring_nan(ev[:q]), "lower early (jump after the first sublayers, then plateau)", definition.format(which="first")),
        "cae_ev_block_late": row(_median_ignoring_nan(ev[-q:]), "higher late (slow rise to the end)", definition.format(which="last")),
    }
    if "test_sequence_stats" in cae:
        stats = np.asarray(cae["test_sequence_stats"], dtype=np.float64)
        samples = bootstrap(lambda rows_: block_ev_late_minus_early(ev_block_from_sequence_stats(stats, rows_)), len(stats), n_resamples, seed)
        rows["cae_ev_block_late_minus_early"] = comparison_row(
            block_ev_late_minus_early(ev), "> 0 (explained variance rises: a jump after the first sublayers, a slow rise later)",
            "Fig. 3D: cae_ev_block_late - cae_ev_block_early.", samples, ">",
            resampled_label("test sequences", n_resamples, seed), null=0.0,
        )
    return rows


def summary_fig3(cae: Mapping[str, np.ndarray], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """summary.json rows of Fig. 3 from the arrays of ``cae/embedding.zarr``. Comparison rows resample test
    sequences ``n_resamples`` times with ``seed`` (``summary.bootstrap``, ``summary.seed``).

    Medians of the per-sublayer R^2 against the sublayer's own mean (a grey reference
    of Fig. 3D) skip sublayers of negligible variance (``sublayers_with_variance``) and
    those without variance (NaN).
    """
    rows: dict[str, dict[str, Any]] = {}
    if "ev_block_per_sublayer" in cae:
        rows.update(_block_ev_rows(cae, n_resamples, seed))
    if "embedding" in cae:
        from rsdyn.cae.metrics import step_distances

        distances = step_distances(cae["embedding"])
        samples = bootstrap(lambda rows_: step_ratio(distances[rows_]), len(distances), n_resamples, seed)
        rows["cae_step_distance_late_over_early"] = comparison_row(
            step_ratio(distances), "> 1 (steps grow with depth: trajectories straighten and speed up)",
            "Fig. 3C: mean 2-D distance between successive sublayers over the last quarter of transitions divided by that over the first quarter (test sequences).",
            samples, ">", resampled_label("test sequences", n_resamples, seed), null=1.0,
        )
    else:
        steps = np.asarray(cae["step_distance"], dtype=np.float64)
        q = quarter(len(steps))
        rows["cae_step_distance_late_over_early"] = row(
            float(np.mean(steps[-q:]) / np.mean(steps[:q])), "> 1 (steps grow with depth: trajectories straighten and speed up)",
            "Fig. 3C: mean 2-D distance between successive sublayers over the last quarter of transitions divided by that over the first quarter (test sequences).",
        )
    ev = np.asarray(cae["ev_per_sublayer"], dtype=np.float64).copy()
    if "test_variance_per_sublayer" in cae:
        ev[~sublayers_with_variance(cae["test_variance_per_sublayer"])] = np.nan
    q = quarter(len(ev))
    threshold = f"{NEGLIGIBLE_RELATIVE_VARIANCE:g}"
    rows["cae_ev_own_mean_early"] = row(
        _median_ignoring_nan(ev[:q]), "not reported (grey reference of Fig. 3D)",
        "Fig. 3D (grey reference): median over the first quarter of sublayers of the test-set R^2 against each unit's own mean "
        "in the sublayer, 1 - ||X_s - Y_s||^2 / ||X_s - mean(X_s)||^2, skipping sublayers whose variance across test sequences "
        f"is below {threshold} of the mean sublayer variance (a 2-D code mostly encodes depth, so this within-sublayer R^2 stays near 0).",
    )
    rows["cae_ev_own_mean_late"] = row(
        _median_ignoring_nan(ev[-q:]), "not reported (grey reference of Fig. 3D)",
        "Fig. 3D (grey reference): the same median over the last quarter of sublayers.",
    )
    if "ev_per_sublayer_pooled_reference" in cae:
        pooled = np.asarray(cae["ev_per_sublayer_pooled_reference"], dtype=np.float64)
        rows["cae_ev_pooled_reference_early"] = row(
            _median_ignoring_nan(pooled[:q]), "not reported (grey reference of Fig. 3D)",
            "Fig. 3D (grey reference): median over the first quarter of sublayers of 1 - ||X_s - Y_s||^2 / ||X_s - m||^2 with m "
            "the pooled mean of all test states, i.e. the share of the sublayer's spread around the pooled mean, "
            "its depth offset included, that the reconstruction recovers.",
        )
        rows["cae_ev_pooled_reference_late"] = row(
            _median_ignoring_nan(pooled[-q:]), "not reported (grey reference of Fig. 3D)",
            "Fig. 3D (grey reference): the same median over the last quarter of sublayers.",
        )
    if "test_r2_pooled" in cae:
        rows["cae_test_r2_pooled"] = row(
            float(cae["test_r2_pooled"]), "not reported",
            "Test-set R^2 of the CAE reconstruction over all states: 1 - sum ||x - y||^2 / sum ||x - m||^2, m the pooled mean of all test states.",
        )
    return rows
