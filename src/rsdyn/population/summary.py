"""summary.json rows of Fig. 2 (are the rotations beyond chance?) and their README section.

``summary_rotations`` reads ``unit_stats.zarr`` (R of every unit and its four per-unit
nulls) and ``population.zarr`` (jPCA, TME surrogates) and returns the rows;
``readme_section`` renders the "Are the rotations real?" section from a summary.json.

Rows that compare (real vs a null) carry a 95 % bootstrap interval and a verdict
(``rsdyn.core.verdicts``) against the paper's direction ("more rotation than the shuffle
control"): per-unit rows resample units (R is a statistic of each unit's sample-mean
trajectory), jPCA rows resample sequences with the PCs held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.core.resampling import counts
from rsdyn.core.verdicts import (
    DEFAULT_RESAMPLES,
    bootstrap,
    bootstrap_indices,
    comparison_row,
    resampled_label,
    row,
)
from rsdyn.population.jpca import weighted_jpca_ratios
from rsdyn.units.rotations import stored_nulls

PAPER_ROTATIONS = 10.74

NULL_LABELS = {
    "point_shuffle": "point shuffle (the portrait's points permuted after the gradient)",
    "increment_shuffle": "increment shuffle (the unit's own steps in random order)",
    "layer_shuffle": "layer shuffle (sublayer order permuted)",
    "phase": "phase surrogate (Fourier phases randomised, trend kept)",
    "circular": "circular shift surrogate",
    "tme": "TME surrogate (tensor maximum entropy: the three marginal covariances kept)",
}

#: what the paper reports for each null's mean R
PAPER_NULL = {"layer_shuffle": "about 0", "point_shuffle": "about 0"}


def _unit_rows(stats: Mapping, null: str, null_mean: np.ndarray, fdr: np.ndarray, observed: np.ndarray, n_resamples: int, seed: int) -> dict[str, dict]:
    """Excess turns and FDR fractions of one per-unit null."""
    label = NULL_LABELS.get(null, null)
    units = resampled_label("units", n_resamples, seed)
    excess = np.abs(observed) - np.abs(null_mean)
    more = fdr & (excess > 0)
    n_units = len(observed)
    rows = {
        f"rotations_{null}_mean": row(
            float(np.mean(null_mean)), PAPER_NULL.get(null),
            f"mean over units of the mean R of the {label} null"),
        f"rotations_excess_turns_{null}": comparison_row(
            float(np.mean(excess)), "> 0 (10.74 vs about 0)",
            f"mean over units of |R| - |mean R of the unit's {label} null|: how many more turns the unit makes than chance",
            bootstrap(lambda rows_: excess[rows_].mean(), n_units, n_resamples, seed), ">", units),
        f"rotations_fdr_fraction_{null}": row(
            float(np.mean(fdr)), None,
            f"fraction of units whose R differs from their own {label} null (two-sided permutation p-value, "
            "Benjamini-Hochberg at unit_stats.fdr_q over units)"),
        f"rotations_fdr_fraction_more_turns_{null}": comparison_row(
            float(np.mean(more)), "the majority of units",
            f"fraction of units significant against their {label} null (FDR) and turning more than it (|R| > |null mean|)",
            bootstrap(lambda rows_: more[rows_].mean(), n_units, n_resamples, seed), ">", units, null=0.5),
    }
    return rows


def unit_rotation_rows(unit_stats: Mapping, population: Mapping | None = None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Rows of the per-unit rotation number R against the paper and each null."""
    original, shuffled = unit_stats["original"], unit_stats["shuffled"]
    observed = np.asarray(original["rotations"], dtype=np.float64)
    rows = {
        "rotations_mean": row(
            float(np.mean(observed)), PAPER_ROTATIONS,
            "mean over units of the signed rotation number R of the unit's sample-mean phase portrait "
            "(PAPER.md Fig. 2; < 0 = clockwise, the sense in which any oscillation of (a, da/dl) turns)"),
        "rotations_abs_mean": row(
            float(np.mean(np.abs(observed))), PAPER_ROTATIONS, "mean over units of |R| (the paper's 10.74 is a magnitude)"),
        "rotations_mean_shuffled": row(
            float(np.mean(shuffled["rotations"])), "about 0", "mean R over units in the token-shuffled condition"),
    }
    for null in stored_nulls(original):
        rows.update(_unit_rows(original, null, np.asarray(original[f"rotations_{null}_mean"]),
                               np.asarray(original[f"rotations_{null}_fdr"], dtype=bool), observed, n_resamples, seed))
        percentile = np.asarray(original[f"rotations_{null}_percentile"])
        rows[f"rotations_fraction_beyond_{null}_95"] = row(
            float(np.mean((percentile < 2.5) | (percentile > 97.5))), None,
            f"fraction of units whose R lies outside the central 95% of their own {NULL_LABELS.get(null, null)} null (uncorrected)")
    for null in stored_nulls(original, "rotations_per_sample"):
        rows[f"rotations_per_sample_fdr_fraction_{null}"] = row(
            float(np.mean(original[f"rotations_per_sample_{null}_fdr"])), None,
            f"fraction of units whose mean over samples of the per-sample R differs from its {NULL_LABELS.get(null, null)} "
            "null (each draw applied to every sample; Benjamini-Hochberg over units)")
    if population is not None:
        tme = population["original"]["tme_rotations"]
        rows.update(_unit_rows(original, "tme", np.asarray(tme["mean"]), np.asarray(tme["fdr"], dtype=bool), observed, n_resamples, seed))
        rows["rotations_abs_mean_tme_percentile"] = row(
            float(tme["abs_mean_percentile"]), None,
            "percentile of the observed mean |R| over units among the same statistic of the TME surrogates")
    return rows


# --------------------------------------------------------------------------- jPCA


def bootstrap_jpca_ratio(scores: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, each_sublayer: bool = False) -> np.ndarray:
    """jPCA ratio of sequences resampled with replacement from scores (N, S, k), the PCs
    held fixed, each resample re-centred (by its pooled mean, or with ``each_sublayer`` by
    its mean over sequences at each sublayer, for the deviations): (n_resamples,). The
    resamples are :func:`rsdyn.core.verdicts.bootstrap_indices`'; each ratio is computed
    from the resample's moments (:func:`rsdyn.population.jpca.weighted_jpca_ratios`),
    equal to :func:`rsdyn.population.jpca.jpca_of_scores` of the resampled scores."""
    scores = np.asarray(scores, dtype=np.float64)
    weights = counts(bootstrap_indices(scores.shape[0], n_resamples, seed), scores.shape[0])
    return weighted_jpca_ratios(scores, weights, each_sublayer)["jpca_ratio"]


def tme_verdict(interval, q05: float, q95: float) -> str:
    """``reproduced`` when the whole interval lies above the TME null's 95th percentile
    (more rotational than chance), ``opposite`` when it lies below its 5th percentile,
    else ``inconclusive``."""
    low, high = (float(value) for value in interval)
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > q95:
        return "reproduced"
    if high < q05:
        return "opposite"
    return "inconclusive"


def jpca_rows(population: Mapping, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """jPCA ratio rows against the TME null, whole depth and per window, both conditions."""
    rows: dict[str, dict] = {}
    sequences = resampled_label("sequences, PCs fixed", n_resamples, seed)
    for condition, suffix in (("original", ""), ("shuffled", "_shuffled")):
        groups = population[condition]
        windows = sorted((name for name in groups if name.startswith("window_") and not name.endswith("_deviations")),
                         key=lambda n: int(n.split("_")[1]))
        for variant, states in (("", "pooled states"), ("_deviations", "deviations from the mean over sequences at each sublayer")):
            for name in ["jpca"] + windows:
                if name + variant not in groups:
                    continue
                group = groups[name + variant]
                where = "all sublayers" if name == "jpca" else f"sublayers {int(group['sublayers'][0])}-{int(group['sublayers'][1]) - 1}"
                key = "jpca_ratio" + variant + ("" if name == "jpca" else f"_window{name.split('_')[1]}") + suffix
                null = np.asarray(group["tme_jpca_ratio"], dtype=np.float64)
                q05, q95 = (float(value) for value in np.nanpercentile(null, [5, 95]))
                entry = comparison_row(
                    float(group["jpca_ratio"]), "rotations beyond chance (the paper's claim for single units)",
                    f"jPCA on the top-k PCs of the {states}, {where} ({'token-shuffled' if suffix else 'original'} text): "
                    "R^2 of the best skew-symmetric linear dynamics / R^2 of the best linear dynamics (Xdot = X M, "
                    "drift as intercept); verdict: reproduced when the whole interval lies above the 95th percentile "
                    "of the same ratio on TME surrogates, opposite when below their 5th percentile",
                    bootstrap_jpca_ratio(group["scores"], n_resamples, seed, each_sublayer=bool(variant)), ">", sequences, null=q95)
                entry.update(
                    depth=where,
                    verdict=tme_verdict(entry["interval"], q05, q95),
                    expected=f"> {q95:.3g} (TME 95th percentile)",
                    tme_percentile=float(group["tme_percentile"]),
                    tme_null_q05=q05,
                    tme_null_median=float(np.nanmedian(null)),
                    tme_null_q95=q95,
                    ratio_literal=float(group["jpca_ratio_literal"]),
                    tme_percentile_literal=float(group["tme_percentile_literal"]),
                )
                rows[key] = entry
        whole = groups["jpca"]
        rows[f"jpca_r2_best{suffix}"] = row(float(whole["r2_best"]), None, "R^2 of the best linear dynamics Xdot = X M on the top-k PCs (all sublayers)")
        rows[f"jpca_r2_skew{suffix}"] = row(float(whole["r2_skew"]), None, "R^2 of the best skew-symmetric (rotational) dynamics on the top-k PCs")
        rows[f"jpca_turns_per_sublayer{suffix}"] = row(
            float(np.asarray(whole["turns_per_sublayer"])[0]), None, "fastest rotation of M_skew: |imaginary eigenvalue| / 2 pi, turns per sublayer")
    return rows


def summary_rotations(unit_stats: Mapping, population: Mapping | None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Every Fig. 2 row: R against the paper and the four per-unit nulls (and TME), and
    jPCA against TME (when ``population``, ``read_group(population.zarr)``, is given)."""
    rows = unit_rotation_rows(unit_stats, population, n_resamples, seed)
    if population is not None:
        rows.update(jpca_rows(population, n_resamples, seed))
    return rows


# --------------------------------------------------------------------------- README


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and abs(value) < 1e-12:
        return "0"
    if isinstance(value, float):
        return f"{value:.{digits}g}".replace("-", "−")
    return str(value)


def _interval(entry: Mapping) -> str:
    low, high = entry.get("interval", (None, None))
    return f"[{_number(low)}, {_number(high)}]"


def _names(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1] if items else "none"


def _claim(summary: Mapping[str, Any], claim_id: str) -> Mapping[str, Any] | None:
    return next((claim for claim in summary.get("claims", []) if claim["id"] == claim_id), None)


def _conclusion(summary: Mapping[str, Any]) -> str:
    """One paragraph that reads the judged claims on rotations (the rows are descriptive)."""
    sentences = []
    for claim_id, what in (
        ("units_rotate_beyond_chance", "Units turning more than a random walk with their own steps"),
        ("rotation_in_majority_of_units", "A majority of units beyond their random-walk null"),
        ("rotations_spiral_out", "Rotations spiralling out"),
        ("population_rotations_beyond_tme", "Population rotations beyond the TME null (beyond the paper)"),
    ):
        claim = _claim(summary, claim_id)
        if claim and claim.get("verdict"):
            sentences.append(f"{what}: **{claim['verdict']}** ({_number(claim.get('value'))} {_interval(claim)}, Holm-adjusted p {_number(claim.get('p_holm'), 2)}).")
    return ("The judged claims (see the claims table): " + " ".join(sentences)) if sentences else ""


def readme_section(summary: Mapping[str, Any]) -> str:
    """The "Are the rotations real?" README section (Markdown) from a summary.json: the
    descriptive rows against every null, and what the judged claims say."""
    rows = summary["rows"]
    nulls = [null for null in (*NULL_LABELS,) if f"rotations_excess_turns_{null}" in rows]
    lines = [
        "### Are the rotations real?",
        "",
        f"The paper counts {PAPER_ROTATIONS} turns per unit against \"about 0\" for a shuffle control. On "
        f"{summary.get('model', {}).get('model_name') or summary.get('run', 'this run')} the units turn "
        f"{_number(rows['rotations_abs_mean']['value'])} times on average (mean signed R "
        f"{_number(rows['rotations_mean']['value'])}; token-shuffled text {_number(rows['rotations_mean_shuffled']['value'])}). "
        "How that compares with each null (descriptive; the judged reading is the random walk, below):",
        "",
        "| null | its mean R | units differing (FDR 0.05) | units turning more (FDR) [95 % CI] | excess turns \\|R\\| − \\|null\\| [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for null in nulls:
        excess, more = rows[f"rotations_excess_turns_{null}"], rows[f"rotations_fdr_fraction_more_turns_{null}"]
        lines.append(
            f"| {NULL_LABELS[null]} | {_number(rows[f'rotations_{null}_mean']['value'])} | "
            f"{_number(rows[f'rotations_fdr_fraction_{null}']['value'])} | {_number(more['value'])} {_interval(more)} | "
            f"{_number(excess['value'])} {_interval(excess)} |"
        )
    lines += [
        "",
        "The point-shuffle null permutes the portrait's points after the gradient; a permutation and its reverse "
        "are equally likely and reversing a path flips the sign of R, so its mean is 0 whatever the data "
        f"(here {_number(rows.get('rotations_point_shuffle_mean', {}).get('value'))}): that is where the paper's \"about 0\" "
        "comes from, and beating it says only that the portrait is a path, so it is reported, never judged. The nulls "
        "that keep the unit's own steps (increment shuffle: a random walk, which turns about as often as the paper's "
        "units), values (layer shuffle), spectrum (phase) or covariances (TME) ask whether the order of the sublayers "
        "adds turns.",
        "",
        "Population rotations (jPCA, Churchland et al. 2012, on the top-k pooled PCs of the soft-normalised states) "
        "against tensor-maximum-entropy surrogates (Elsayed & Cunningham 2017), which keep the covariance across "
        "sequences, sublayers and units (descriptive; the whole-depth original-text row is the judged claim):",
        "",
        "| states | depth | jpca_ratio original [95 % CI] | TME percentile | token-shuffled [95 % CI] | TME percentile |",
        "|---|---|---|---|---|---|",
    ]
    windows = sorted({int(name.removeprefix("jpca_ratio_window")) for name in rows
                      if name.startswith("jpca_ratio_window") and name.removeprefix("jpca_ratio_window").isdigit()})
    for variant, states in (("", "pooled"), ("_deviations", "deviations")):
        for name in [f"jpca_ratio{variant}"] + [f"jpca_ratio{variant}_window{index}" for index in windows]:
            if name not in rows:
                continue
            original, shuffled = rows[name], rows.get(f"{name}_shuffled", {})
            lines.append(
                f"| {states} | {original['depth']} | {_number(original['value'])} {_interval(original)} | {_number(original['tme_percentile'])} | "
                f"{_number(shuffled.get('value'))} {_interval(shuffled) if shuffled else ''} | {_number(shuffled.get('tme_percentile'))} |"
            )
    conclusion = _conclusion(summary)
    if conclusion:
        lines += ["", conclusion]
    lines += [
        "",
        "jpca_ratio = R² of the best skew-symmetric (purely rotational) linear dynamics / R² of the best linear "
        "dynamics of the PC scores over depth. \"pooled\": the states as the issue defines jPCA; \"deviations\": each "
        "sequence minus the mean over sequences at each sublayer (Churchland et al.'s preprocessing), i.e. without the "
        "trajectory all sequences share. Rows: `rotations_*`, `jpca_*` in summary.json.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m rsdyn.population.summary results/{run}/summary.json``: the README section."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("summary", help="a summary.json written by the summary rule")
    args = parser.parse_args(argv)
    print(readme_section(json.loads(Path(args.summary).read_text())), end="")


if __name__ == "__main__":
    main()
