"""PCA stage at a large shape: the streamed pooled fit from a zarr store against the
in-memory fit, and the cost of the bootstrap over sequences.

A synthetic capture (``--samples`` x ``--sublayers`` x ``--units`` float32, chunked in
tiles of 64 sequences like the streamed capture) is written to a scratch zarr store.
Timed in one process, with the peak of NumPy allocations traced (``tracemalloc``):
(a) the old path, ``fit_pca`` on the whole array read into memory; (b) the streamed path,
``fit_pca_streamed`` on the zarr array (sample blocks into the D x D Gram); (c) the whole
stage without and (d) with ``--resamples`` bootstrap resamples. Reports b/a and d/c. The
read block is ``--block-mb`` (smaller than the stage's 64 MB, so that a shape this machine
can run shows what the paper's shape does: the streamed peak follows the block, the
in-memory one the data).
Writes benchmarks/results/pca.json.

    python benchmarks/pca.py [--samples 400] [--sublayers 64] [--units 1024] [--resamples 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from common import REPO, write_report

from rsdyn.core.linalg import fit_pca, fit_pca_streamed
from rsdyn.core.store import open_group, write_group
from rsdyn.geometry.pca import pca_of_states


def measured(function):
    """``(result, seconds, peak traced MB)`` of ``function()``."""
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--sublayers", type=int, default=64)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--components", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--block-mb", type=float, default=8.0, help="float32 MB read at once (the stage's default is 64)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/pca.json"))
    args = parser.parse_args()

    import rsdyn.core.linalg as linalg_module

    linalg_module._BLOCK_BYTES = int(args.block_mb * 2**20)
    linalg_module._CHUNK_BYTES = int(args.block_mb * 2**20)
    rng = np.random.default_rng(0)
    shape = (args.samples, args.sublayers, args.units)
    scales = np.geomspace(10.0, 0.01, args.units).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        states = (rng.standard_normal(shape, dtype=np.float32) * scales).cumsum(axis=1, dtype=np.float32)
        store = Path(scratch) / "activations.zarr"
        write_group(store, {"original": states}, chunks={"original": (64, args.sublayers, min(256, args.units))})
        data_mb = states.nbytes / 2**20
        del states
        array = open_group(store)["original"]
        rows = args.samples * args.sublayers
        old, old_s, old_mb = measured(lambda: fit_pca(np.asarray(array[...]).reshape(rows, args.units), args.components, "gram"))
        new, new_s, new_mb = measured(lambda: fit_pca_streamed(array, args.components, "gram"))
        difference = float(np.abs(np.abs(new["components"]) - np.abs(old["components"])).max())
        _, stage_s, stage_mb = measured(lambda: pca_of_states(array, args.components, "gram", n_resamples=0))
        _, boot_s, boot_mb = measured(lambda: pca_of_states(array, args.components, "gram", n_resamples=args.resamples))

    result = {
        "machine": platform.processor() or platform.machine(),
        "shape": list(shape),
        "data_mb_float32": data_mb,
        "block_mb": args.block_mb,
        "in_memory_fit_s": old_s, "in_memory_fit_peak_mb": old_mb,
        "streamed_fit_s": new_s, "streamed_fit_peak_mb": new_mb,
        "streamed_over_in_memory_time": new_s / old_s,
        "streamed_over_in_memory_peak": new_mb / old_mb,
        "max_component_difference": difference,
        "stage_without_bootstrap_s": stage_s, "stage_without_bootstrap_peak_mb": stage_mb,
        "resamples": args.resamples,
        "stage_with_bootstrap_s": boot_s, "stage_with_bootstrap_peak_mb": boot_mb,
        "bootstrap_over_plain_time": boot_s / stage_s,
    }
    write_report(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
