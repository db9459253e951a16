"""The Jacobian stage's summary rows (Fig. 5, beyond the paper: the authors' follow-up):
early-minus-late gradients of the rotation index, non-normality and antisymmetry through
depth, for J and for the update J - I, at trained and initial weights, with bootstrap
intervals over the sampled sequences, and the cumulative-product bottleneck."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.jacobian.jacobian import DEFINITIONS
from rsdyn.jacobian.settings import WEIGHTS_TRAINED

#: the follow-up's claims: (quantity, what early vs late should show)
GRADIENT_QUANTITIES = {
    "rotation_index": "rotation-dominated early, not late",
    "henrici": "non-normal early, near-normal late",
    "antisymmetric_share": "antisymmetric early, near-symmetric late",
}

READINGS = {"": "J", "update_": "the update J - I"}


def _thirds(n_transitions: int) -> tuple[slice, slice]:
    third = max(1, n_transitions // 3)
    return slice(0, third), slice(n_transitions - third, n_transitions)


def _early_minus_late(values: np.ndarray) -> np.ndarray:
    """Per sample: mean over the first third of the transitions minus the last third."""
    early, late = _thirds(values.shape[1])
    return values[:, early].mean(axis=1) - values[:, late].mean(axis=1)


def _interval_row(value, paper, definition, samples, resampled) -> dict[str, Any]:
    """A row with a bootstrap interval but no verdict (no direction is claimed)."""
    from rsdyn.core.verdicts import DEFAULT_LEVEL, percentile_interval, row

    interval = [float(bound) if np.isfinite(bound) else None for bound in percentile_interval(samples)]
    out = row(value, paper, definition)
    out.update(interval=interval, level=DEFAULT_LEVEL, resampled=resampled)
    return out


def summary_jacobian(
    arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None, n_resamples: int = 200, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``summary.json`` rows of ``jacobian.zarr`` against the follow-up's stated directions.

    Intervals: percentile bootstrap over the Jacobian samples (sequences); trained and
    initial weights share the sequences, so their differences resample pairs. Early /
    late: the first / last third of the 2L transitions. Per reading (J, and the update
    J - I, prefix ``update_``) and quantity (rotation index, Henrici departure,
    antisymmetric share): early minus late (trained, expected > 0), the same for the
    initial weights (interval only: the follow-up says the gradient is absent there),
    trained minus initial of it (expected > 0: learned), and the Spearman correlation of
    the sample-mean quantity with depth (expected < 0: monotonic). Bottleneck: the
    effective rank (exp spectral entropy) of the whole product J_{2L-1} ... J_0, its
    fraction of D, its ratio to the smallest single-transition effective rank (expected
    < 1: cumulative), trained minus initial (expected < 0: learned); the top
    finite-depth Lyapunov exponent.
    """
    from scipy.stats import spearmanr

    from rsdyn.core.verdicts import bootstrap, comparison_row, resampled_label, row

    trained = arrays[WEIGHTS_TRAINED]
    initial = arrays.get("initial")
    n_samples, n_transitions = trained["rotation_index"].shape
    d_model = int((attrs or {}).get("d_model", trained["singular_values"].shape[-1]))
    resampled = resampled_label(f"Jacobian sequences (n = {n_samples})", n_resamples, seed)
    depth = np.arange(n_transitions)

    def boot(statistic):
        return bootstrap(statistic, n_samples, n_resamples, seed)

    def spearman(values):
        return float(spearmanr(depth, values).statistic) if np.ptp(values) > 0 else np.nan

    rows: dict[str, dict[str, Any]] = {}
    early, late = _thirds(n_transitions)
    span = f"transitions {early.start}-{early.stop - 1} vs {late.start}-{late.stop - 1} of {n_transitions}"
    for prefix, reading in READINGS.items():
        for quantity, claim in GRADIENT_QUANTITIES.items():
            name = f"jacobian_{prefix}{quantity}"
            definition = f"{DEFINITIONS[quantity]} of {reading}"
            difference = _early_minus_late(trained[prefix + quantity])
            rows[f"{name}_early_minus_late"] = comparison_row(
                float(difference.mean()), f"> 0 ({claim})",
                f"mean over sequences of (early mean - late mean) of the {definition}, trained weights; {span}",
                boot(lambda r: difference[r].mean()), ">", resampled,
            )
            per_transition = trained[prefix + quantity]
            rows[f"{name}_depth_spearman"] = comparison_row(
                spearman(per_transition.mean(axis=0)), "< 0 (monotonic gradient through depth)",
                f"Spearman correlation of the sequence-mean {definition} with the transition index, trained weights",
                boot(lambda r: spearman(per_transition[r].mean(axis=0))), "<", resampled,
            )
            if initial is None:
                continue
            baseline = _early_minus_late(initial[prefix + quantity])
            rows[f"{name}_early_minus_late_initial"] = _interval_row(
                float(baseline.mean()), "about 0 (the gradient is absent at initialisation)",
                f"as {name}_early_minus_late, freshly initialised weights", boot(lambda r: baseline[r].mean()), resampled,
            )
            learned = difference - baseline
            rows[f"{name}_gradient_learned"] = comparison_row(
                float(learned.mean()), "> 0 (the gradient is learned)",
                f"{name}_early_minus_late of trained minus initial weights (paired by sequence)",
                boot(lambda r: learned[r].mean()), ">", resampled,
            )

    final = trained["cumulative_effective_rank_entropy"][:, -1]
    rows["jacobian_cumulative_rank_final"] = _interval_row(
        float(final.mean()), "a small fraction of the residual stream's dimensions",
        f"{DEFINITIONS['cumulative_effective_rank_entropy']} for the whole depth (s = {n_transitions - 1}), "
        "mean over sequences, trained weights", boot(lambda r: final[r].mean()), resampled,
    )
    rows["jacobian_cumulative_rank_fraction"] = row(
        float(final.mean()) / d_model, "small", f"jacobian_cumulative_rank_final / D (D = {d_model})"
    )
    single = trained["effective_rank_entropy"].min(axis=1)
    ratio = final / single
    rows["jacobian_bottleneck_ratio"] = comparison_row(
        float(ratio.mean()), "< 1 (the bottleneck is cumulative)",
        "per sequence, the effective rank of the whole product over the smallest effective rank of a single "
        "J_s (both exp spectral entropy), mean over sequences, trained weights",
        boot(lambda r: ratio[r].mean()), "<", resampled, null=1.0,
    )
    if initial is not None:
        collapse = final - initial["cumulative_effective_rank_entropy"][:, -1]
        rows["jacobian_bottleneck_learned"] = comparison_row(
            float(collapse.mean()), "< 0 (the collapse is learned)",
            "effective rank of the whole product, trained minus initial weights (paired by sequence)",
            boot(lambda r: collapse[r].mean()), "<", resampled,
        )
    top = trained["lyapunov"][:, -1, 0].astype(np.float64)
    rows["jacobian_top_lyapunov"] = _interval_row(
        float(top.mean()), None, f"largest finite-depth Lyapunov exponent over the whole depth, {DEFINITIONS['lyapunov']}",
        boot(lambda r: top[r].mean()), resampled,
    )
    return rows
