"""Bootstrap of the Fig. 1 quantities: count-weighted moments vs recomputing on resampled sequences.

On an ``activations.zarr`` (default: the default run's), times (a) ``resample_condition``:
every Fig. 1 quantity (r per unit and transition, density, norm, cosine, velocity) for
``--resamples`` bootstrap resamples of the sequences as matrix products of count weights,
streamed over unit chunks (store reads included), and (b) the naive way: index the
sequences of each resample and recompute r with ``rsdyn.units.correlations.corr_consecutive``
(r only, on data already in memory), on ``--naive`` resamples, scaled per resample.
Reports (b)/(a) per resample and the largest difference of r between the two.
Writes benchmarks/results/resample.json.

    python benchmarks/resample.py [--store results/smollm2-135m/activations.zarr] [--resamples 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from common import REPO, write_report

from rsdyn.core.store import open_group
from rsdyn.core.verdicts import bootstrap_indices
from rsdyn.units.correlations import corr_consecutive
from rsdyn.units.resample import count_weights, resample_condition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=str(REPO / "results/smollm2-135m/activations.zarr"))
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--naive", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/resample.json"))
    args = parser.parse_args()

    array = open_group(args.store)["original"]
    n_samples = array.shape[0]
    indices = bootstrap_indices(n_samples, args.resamples, seed=0)
    start = time.perf_counter()
    fast = resample_condition(array, count_weights(indices, n_samples), density_threshold=0.1)
    vectorised = time.perf_counter() - start

    acts = np.asarray(array[:], dtype=np.float64)
    start = time.perf_counter()
    naive_r = [corr_consecutive(acts[rows]) for rows in indices[: args.naive]]
    naive = time.perf_counter() - start
    difference = max(float(np.nanmax(np.abs(fast["r"][1 + b] - r))) for b, r in enumerate(naive_r))

    result = {
        "store": args.store,
        "shape": list(array.shape),
        "resamples": args.resamples,
        "vectorised_s": vectorised,
        "vectorised_per_resample_ms": 1e3 * vectorised / args.resamples,
        "naive_r_only_per_resample_ms": 1e3 * naive / args.naive,
        "speedup_per_resample": (naive / args.naive) / (vectorised / args.resamples),
        "max_abs_difference_r": difference,
        "machine": platform.processor() or platform.machine(),
    }
    write_report(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
