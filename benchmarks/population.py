"""jPCA ratios of many row sets: from their moments vs the whole fit on each (population stage).

On a ``population.zarr`` (default: the default run's), with the original condition's
stored k-PC scores, times in one process:

(a) the claims' bootstrap of the jPCA ratio (``--resamples`` resamples of the sequences):
    ``rsdyn.population.summary.bootstrap_jpca_ratio`` (count weights and the resamples'
    moments) against ``jpca_of_scores`` of each resampled, re-centred score array, on
    ``--naive`` resamples, scaled per resample;
(b) the TME null (``--surrogates`` surrogates of a TME fit of the scores):
    ``rsdyn.population.population.surrogate_null`` (the surrogates' moments from their
    mode-0 factors) against ``surrogate_jpca_ratios`` of each whole surrogate tensor from
    ``sample_tme``, on ``--naive`` surrogates, scaled per surrogate.

Reports each speed-up per resample or surrogate and the largest difference of the
ratios. Writes benchmarks/results/population.json.

    python benchmarks/population.py [--store results/smollm2-135m/population.zarr]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from common import REPO, write_report

from rsdyn.core.store import read_group
from rsdyn.core.verdicts import bootstrap_indices
from rsdyn.population.jpca import jpca_of_scores
from rsdyn.population.population import surrogate_jpca_ratios, surrogate_null
from rsdyn.population.summary import bootstrap_jpca_ratio
from rsdyn.population.tme import fit_tme, sample_tme, single_threaded_blas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(REPO / "results/smollm2-135m/population.zarr"))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--surrogates", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/population.json"))
    args = parser.parse_args()

    scores = np.asarray(read_group(args.store)["original"]["jpca"]["scores"], dtype=np.float64)
    k = scores.shape[2]

    began = time.perf_counter()
    fast = bootstrap_jpca_ratio(scores, args.resamples, seed=0)
    moments_s = time.perf_counter() - began
    indices = bootstrap_indices(scores.shape[0], args.resamples, seed=0)[: args.naive]
    began = time.perf_counter()
    with single_threaded_blas():
        naive = [jpca_of_scores(scores[rows] - scores[rows].reshape(-1, k).mean(axis=0))["jpca_ratio"] for rows in indices]
    naive_s = time.perf_counter() - began
    bootstrap_difference = float(np.max(np.abs(fast[: args.naive] - np.asarray(naive))))

    model = fit_tme(scores)
    began = time.perf_counter()
    null = surrogate_null(model, args.surrogates, seed=0, stream=0)
    null_s = time.perf_counter() - began
    began = time.perf_counter()
    with single_threaded_blas():
        whole = np.array([surrogate_jpca_ratios(surrogate) for surrogate in sample_tme(model, args.naive, seed=0, stream=0)])
    whole_s = time.perf_counter() - began

    result = {
        "store": args.store,
        "scores_shape": list(scores.shape),
        "bootstrap": {
            "resamples": args.resamples, "moments_s": moments_s, "naive_resamples": args.naive,
            "naive_per_resample_ms": 1e3 * naive_s / args.naive, "moments_per_resample_ms": 1e3 * moments_s / args.resamples,
            "speedup_per_resample": (naive_s / args.naive) / (moments_s / args.resamples),
            "max_abs_difference_ratio": bootstrap_difference,
        },
        "tme_null": {
            "surrogates": args.surrogates, "moments_s": null_s, "naive_surrogates": args.naive,
            "naive_per_surrogate_ms": 1e3 * whole_s / args.naive, "moments_per_surrogate_ms": 1e3 * null_s / args.surrogates,
            "speedup_per_surrogate": (whole_s / args.naive) / (null_s / args.surrogates),
            "max_abs_difference_ratio": float(np.max(np.abs(null[: args.naive, 0] - whole[:, 0]))),
            "max_abs_difference_literal": float(np.max(np.abs(null[: args.naive, 1] - whole[:, 1]))),
        },
        "machine": platform.machine(),
    }
    path = write_report(result, args.out)
    for part in ("bootstrap", "tme_null"):
        entry = result[part]
        speedup = entry.get("speedup_per_resample", entry.get("speedup_per_surrogate"))
        print(f"{part}: {speedup:.1f}x per draw, max |difference| {entry['max_abs_difference_ratio']:.2g}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
