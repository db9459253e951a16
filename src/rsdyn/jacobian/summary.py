"""The Jacobian stage's summary rows (Fig. 5; every row is beyond the paper: the authors'
follow-up and, for the baselines, a referee's controls).

Early-minus-late gradients of the rotation index, non-normality and antisymmetry through
depth, for J and for the update J - I, at trained and initial weights; the cumulative
product's bottleneck; and trained against each baseline (freshly initialised weights over
several init seeds, and the two surrogates of the trained updates) for the rotation-index
gradient, the update-norm gradient and the product's effective rank, with the "learned
geometry" verdict. Intervals: percentile bootstrap over the sequences and, where a group
has them, its init seeds or surrogate draws (:mod:`rsdyn.jacobian.statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.jacobian.jacobian import DEFINITIONS
from rsdyn.jacobian.settings import BASELINES, WEIGHTS_TRAINED
from rsdyn.jacobian.statistics import (
    STATISTICS,
    Resamples,
    early_minus_late,
    group_statistic,
    observed,
    resamples,
    row_weights,
    thirds,
    weighted_mean,
)

#: the follow-up's claims: (quantity, what early vs late should show)
GRADIENT_QUANTITIES = {
    "rotation_index": "rotation-dominated early, not late",
    "henrici": "non-normal early, near-normal late",
    "antisymmetric_share": "antisymmetric early, near-symmetric late",
}

READINGS = {"": "J", "update_": "the update J - I"}

BEYOND = "Beyond the paper (the authors' follow-up)"
BEYOND_CONTROL = "Beyond the paper (a control of the authors' follow-up)"

#: per compared statistic: the direction trained - baseline should take if the geometry is learned (None: no claim)
COMPARISONS = {
    "rotation_index_early_minus_late": (">", "the rotation-index gradient exceeds the baseline's"),
    "update_norm_log_early_over_late": (None, "no direction claimed"),
    "cumulative_rank_final": ("<", "the product collapses further than the baseline's"),
}
#: the compared statistics that make up the learned-geometry verdict
GEOMETRY = ("rotation_index_early_minus_late", "cumulative_rank_final")

#: rows of baseline_rows whose number is also an older row's
SAME_AS = {
    "jacobian_rotation_index_early_minus_late_trained_minus_initial": "jacobian_rotation_index_gradient_learned",
    "jacobian_cumulative_rank_final_trained_minus_initial": "jacobian_bottleneck_learned",
}

BASELINE_NAMES = {
    "initial": "freshly initialised weights (over the init seeds)",
    "svd_matched": "the svd_matched surrogate (trained singular values, random singular vectors)",
    "norm_matched": "the norm_matched surrogate (Gaussian update of the trained Frobenius norm)",
}


def _interval_row(value, paper, definition, samples, resampled) -> dict[str, Any]:
    """A row with a bootstrap interval but no verdict (no direction is claimed)."""
    from rsdyn.core.verdicts import DEFAULT_LEVEL, percentile_interval, row

    interval = [float(bound) if np.isfinite(bound) else None for bound in percentile_interval(samples)]
    out = row(value, paper, definition)
    out.update(interval=interval, level=DEFAULT_LEVEL, resampled=resampled)
    return out


def _label(arrays: Mapping[str, Any], names, n_resamples: int, seed: int) -> str:
    """What a row's bootstrap draws: the sequences and the draws of the groups ``names``."""
    from rsdyn.core.verdicts import resampled_label

    what = [f"Jacobian sequences (n = {len(np.asarray(arrays.get('sample_indices', arrays[WEIGHTS_TRAINED]['rotation_index'])))})"]
    for name in names:
        draws = int(np.max(arrays[name].get("draw", [0]))) + 1
        if name == "initial":
            what.append(f"init seeds ({draws})")
        elif name != WEIGHTS_TRAINED:
            what.append(f"{name} draws ({draws})")
    return resampled_label(", ".join(what), n_resamples, seed)


def compare_with_baseline(
    arrays: Mapping[str, Any], statistic: str, baseline: str, resampled: Resamples
) -> tuple[np.ndarray, np.ndarray]:
    """``(baseline value, trained minus baseline)`` of one of :data:`STATISTICS` under every
    resample of ``resampled`` (``(R,)`` each; the same sequence draw for both groups)."""
    per_row = STATISTICS[statistic][0]
    trained = group_statistic(arrays, WEIGHTS_TRAINED, per_row, resampled)
    other = group_statistic(arrays, baseline, per_row, resampled)
    return other, trained - other


def baseline_rows(arrays: Mapping[str, Any], n_resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """For every statistic of :data:`STATISTICS` and baseline present: the baseline's value
    (``jacobian_{statistic}_{baseline}``) and trained minus it
    (``jacobian_{statistic}_trained_minus_{baseline}``, a verdict where :data:`COMPARISONS`
    states a direction), then ``jacobian_learned_geometry``."""
    from rsdyn.core.verdicts import comparison_row, row, verdict

    boot, data = resamples(arrays, n_resamples, seed), observed(arrays)
    rows: dict[str, dict[str, Any]] = {}
    trained_label = _label(arrays, [WEIGHTS_TRAINED], n_resamples, seed)
    per_row = STATISTICS["update_norm_log_early_over_late"][0]
    rows["jacobian_update_norm_log_early_over_late"] = _interval_row(
        float(group_statistic(arrays, WEIGHTS_TRAINED, per_row, data)[0]), None,
        f"{BEYOND_CONTROL}: {STATISTICS['update_norm_log_early_over_late'][1]}, mean over sequences, trained weights",
        group_statistic(arrays, WEIGHTS_TRAINED, per_row, boot), trained_label,
    )
    verdicts = {}
    for statistic, (per_row, description) in STATISTICS.items():
        direction, claim = COMPARISONS[statistic]
        for baseline in BASELINES:
            if baseline not in arrays:
                continue
            label = _label(arrays, [baseline], n_resamples, seed)
            value, difference = compare_with_baseline(arrays, statistic, baseline, data)
            boot_value, boot_difference = compare_with_baseline(arrays, statistic, baseline, boot)
            rows[f"jacobian_{statistic}_{baseline}"] = _interval_row(
                float(value[0]), None, f"{BEYOND_CONTROL}: {description}, mean over the rows of {BASELINE_NAMES[baseline]}",
                boot_value, label,
            )
            name = f"jacobian_{statistic}_trained_minus_{baseline}"
            definition = (f"{BEYOND_CONTROL}: {description}, trained weights (all sequences) minus {BASELINE_NAMES[baseline]} "
                          "(the baseline's sequences), one sequence resample for both")
            if name in SAME_AS:
                definition += f" (the same number as {SAME_AS[name]})"
            if direction is None:
                rows[name] = _interval_row(float(difference[0]), None, definition, boot_difference, label)
                continue
            rows[name] = comparison_row(float(difference[0]), f"{direction} 0 ({claim})", definition, boot_difference, direction, label)
            if statistic in GEOMETRY:
                verdicts[name] = verdict(rows[name]["interval"], direction)
    needed = [f"jacobian_{statistic}_trained_minus_{baseline}" for statistic in GEOMETRY for baseline in BASELINES]
    definition = (f"{BEYOND_CONTROL}: number of the comparisons {', '.join(needed)} whose interval lies on the learned side; "
                  "reproduced only when all do (trained differs from the initial weights AND from both surrogates, for the "
                  "rotation-index gradient and for the product's effective rank: an intersection-union test at each row's level), "
                  "opposite when any lies on the other side, else inconclusive")
    if all(name in verdicts for name in needed):
        outcome = ("reproduced" if all(verdicts[name] == "reproduced" for name in needed)
                   else "opposite" if any(verdicts[name] == "opposite" for name in needed) else "inconclusive")
        rows["jacobian_learned_geometry"] = {
            **row(sum(verdicts[name] == "reproduced" for name in needed), f"all {len(needed)} (the geometry is learned)", definition),
            "expected": f"= {len(needed)}", "verdict": outcome,
        }
    else:
        rows["jacobian_learned_geometry"] = {
            **row(None, f"all {len(needed)} (the geometry is learned)", definition),
            "caveat": "needs jacobian.baselines initial, svd_matched and norm_matched",
        }
    return rows


def summary_jacobian(
    arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None, n_resamples: int = 200, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``summary.json`` rows of ``jacobian.zarr`` against the follow-up's stated directions.

    Intervals: percentile bootstrap over the Jacobian sequences and, for a baseline, its
    init seeds or surrogate draws (:mod:`rsdyn.jacobian.statistics`; one sequence draw for
    every group, so differences are paired by sequence). Early / late: the first / last
    third of the 2L transitions. Per reading (J, and the update J - I, prefix ``update_``)
    and quantity (rotation index, Henrici departure, antisymmetric share): early minus late
    (trained, expected > 0), the same for the initial weights (interval only: the follow-up
    says the gradient is absent there), trained minus initial of it (expected > 0:
    learned), and the Spearman correlation of the mean quantity with depth (expected < 0:
    monotonic). Bottleneck: the effective rank (exp spectral entropy) of the whole product
    J_{2L-1} ... J_0, its fraction of D, the ratio of the product's participation ratio to
    the smallest single-transition participation ratio (expected < 1: cumulative), trained
    minus initial (expected < 0: learned); the top finite-depth Lyapunov exponent. Then
    :func:`baseline_rows`.
    """
    from scipy.stats import spearmanr

    from rsdyn.core.verdicts import comparison_row, row

    trained = arrays[WEIGHTS_TRAINED]
    initial = arrays.get("initial")
    n_transitions = np.asarray(trained["rotation_index"]).shape[1]
    d_model = int((attrs or {}).get("d_model", np.asarray(trained["eigenvalues"]).shape[-1]))
    boot, data = resamples(arrays, n_resamples, seed), observed(arrays)
    resampled = _label(arrays, [WEIGHTS_TRAINED], n_resamples, seed)
    with_initial = _label(arrays, ["initial"], n_resamples, seed) if initial is not None else resampled
    depth = np.arange(n_transitions)

    def spearman(curves: np.ndarray) -> np.ndarray:
        return np.array([float(spearmanr(depth, curve).statistic) if np.ptp(curve) > 0 else np.nan for curve in curves])

    def mean_of(name: str, per_row, resampled_counts: Resamples) -> np.ndarray:
        return group_statistic(arrays, name, per_row, resampled_counts)

    rows: dict[str, dict[str, Any]] = {}
    early, late = thirds(n_transitions)
    span = f"transitions {early.start}-{early.stop - 1} vs {late.start}-{late.stop - 1} of {n_transitions}"
    for prefix, reading in READINGS.items():
        for quantity, claim in GRADIENT_QUANTITIES.items():
            name = f"jacobian_{prefix}{quantity}"
            definition = f"{DEFINITIONS[quantity]} of {reading}"
            key = prefix + quantity

            def gradient(group, key=key):
                return early_minus_late(np.asarray(group[key], dtype=np.float64))

            rows[f"{name}_early_minus_late"] = comparison_row(
                float(mean_of(WEIGHTS_TRAINED, gradient, data)[0]), f"> 0 ({claim})",
                f"{BEYOND}: mean over sequences of (early mean - late mean) of the {definition}, trained weights; {span}",
                mean_of(WEIGHTS_TRAINED, gradient, boot), ">", resampled,
            )
            values = np.asarray(trained[key], dtype=np.float64)
            rows[f"{name}_depth_spearman"] = comparison_row(
                float(spearman(weighted_mean(values, row_weights(WEIGHTS_TRAINED, trained, data)))[0]),
                "< 0 (monotonic gradient through depth)",
                f"{BEYOND}: Spearman correlation of the sequence-mean {definition} with the transition index, trained weights",
                spearman(weighted_mean(values, row_weights(WEIGHTS_TRAINED, trained, boot))), "<", resampled,
            )
            if initial is None:
                continue
            rows[f"{name}_early_minus_late_initial"] = _interval_row(
                float(mean_of("initial", gradient, data)[0]), "about 0 (the gradient is absent at initialisation)",
                f"{BEYOND}: as {name}_early_minus_late, freshly initialised weights (rows: init seeds x sequences)",
                mean_of("initial", gradient, boot), with_initial,
            )
            rows[f"{name}_gradient_learned"] = comparison_row(
                float((mean_of(WEIGHTS_TRAINED, gradient, data) - mean_of("initial", gradient, data))[0]),
                "> 0 (the gradient is learned)",
                f"{BEYOND}: {name}_early_minus_late of trained (all sequences) minus initial weights (init seeds x the "
                "baseline sequences), one sequence resample for both",
                mean_of(WEIGHTS_TRAINED, gradient, boot) - mean_of("initial", gradient, boot), ">", with_initial,
            )

    def product_rank(group):
        return np.asarray(group["cumulative_effective_rank_entropy"], dtype=np.float64)[:, -1]

    def bottleneck(group):
        product = np.asarray(group["cumulative_effective_rank_pr"], dtype=np.float64)[:, -1]
        return product / np.asarray(group["effective_rank_pr"], dtype=np.float64).min(axis=1)

    def top_exponent(group):
        return np.asarray(group["lyapunov"], dtype=np.float64)[:, -1, 0]

    final = mean_of(WEIGHTS_TRAINED, product_rank, data)[0]
    rows["jacobian_cumulative_rank_final"] = _interval_row(
        float(final), "a small fraction of the residual stream's dimensions",
        f"{BEYOND}: {DEFINITIONS['cumulative_effective_rank_entropy']} for the whole depth (s = {n_transitions - 1}), "
        "mean over sequences, trained weights", mean_of(WEIGHTS_TRAINED, product_rank, boot), resampled,
    )
    rows["jacobian_cumulative_rank_fraction"] = row(
        float(final) / d_model, "small", f"{BEYOND}: jacobian_cumulative_rank_final / D (D = {d_model})"
    )
    rows["jacobian_bottleneck_ratio"] = comparison_row(
        float(mean_of(WEIGHTS_TRAINED, bottleneck, data)[0]), "< 1 (the bottleneck is cumulative)",
        f"{BEYOND}: per sequence, the participation ratio of the singular values of the whole product over the smallest "
        "participation ratio of a single J_s, mean over sequences, trained weights",
        mean_of(WEIGHTS_TRAINED, bottleneck, boot), "<", resampled, null=1.0,
    )
    if initial is not None:
        rows["jacobian_bottleneck_learned"] = comparison_row(
            float((mean_of(WEIGHTS_TRAINED, product_rank, data) - mean_of("initial", product_rank, data))[0]),
            "< 0 (the collapse is learned)",
            f"{BEYOND}: effective rank of the whole product, trained (all sequences) minus initial weights (init seeds x "
            "the baseline sequences), one sequence resample for both",
            mean_of(WEIGHTS_TRAINED, product_rank, boot) - mean_of("initial", product_rank, boot), "<", with_initial,
        )
    rows["jacobian_top_lyapunov"] = _interval_row(
        float(mean_of(WEIGHTS_TRAINED, top_exponent, data)[0]), None,
        f"{BEYOND}: largest finite-depth Lyapunov exponent over the whole depth, {DEFINITIONS['lyapunov']}",
        mean_of(WEIGHTS_TRAINED, top_exponent, boot), resampled,
    )
    for name, entry in baseline_rows(arrays, n_resamples, seed).items():
        rows.setdefault(name, entry)  # jacobian_rotation_index_early_minus_late_initial is already there
    return rows
