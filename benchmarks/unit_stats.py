"""Benchmark of the unit_stats stage.

1. Batched KDE MI (rsdyn.units.mi.mi_kde_pairs) against a per-pair
   ``scipy.stats.gaussian_kde`` loop on the same pairs (N = 661, scipy on one thread):
   speed-up per pair and per transition (``mi_kde``, each sublayer's marginal shared by
   its two transitions), for each CPU backend (numba, torch) on 1 and 2 threads, and the
   largest difference from scipy in nats. Timings are the best of a few rounds taken in
   turn in one process; the load average is recorded.
2. The whole unit_stats stage of the default run (every shard, both conditions, then
   the gather) with 2 worker processes, one thread each, as ``snakemake --cores 2``
   runs it; peak memory of one shard process.
3. How the cost of one block of units grows with N (samples), D (units) and 2L
   (sublayers), per quantity, with fitted exponents.

Uses results/smollm2-135m/activations.zarr when it exists, else a synthetic store of
the same size. Writes benchmarks/results/unit_stats.json and prints a short table.
Usage: python benchmarks/unit_stats.py [--store PATH] [--quick]
"""

from __future__ import annotations

import os

# the scipy baseline and the workers run single-threaded, like a snakemake job with threads: 1
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import REPO, best_seconds, write_report  # noqa: E402
from scipy.stats import gaussian_kde  # noqa: E402

from rsdyn.core.store import open_group, write_group  # noqa: E402
from rsdyn.units import mi  # noqa: E402
from rsdyn.units import unit_stats as us  # noqa: E402
from rsdyn.units.settings import split_units  # noqa: E402

DEFAULT_STORE = REPO / "results" / "smollm2-135m" / "activations.zarr"
OUT = REPO / "benchmarks" / "results" / "unit_stats.json"


def mi_kde_scipy(x: np.ndarray, y: np.ndarray, eps: float = 1e-10) -> float:
    joint = np.vstack([x, y])
    p_xy = gaussian_kde(joint)(joint)
    return float(np.mean(np.log((p_xy + eps) / (gaussian_kde(x)(x) * gaussian_kde(y)(y) + eps))))


def bench_kde(store: Path, n_pairs: int, n_units: int, repeats: int) -> dict:
    """Batched KDE MI vs the scipy loop on the same consecutive-sublayer pairs.

    Per pair: ``mi_kde_pairs`` on ``n_pairs`` (x, y) rows vs scipy, one pair at a time.
    Per transition: ``mi_kde`` on ``n_units`` whole trajectories (each sublayer's marginal
    shared by its two transitions) vs the same scipy seconds per pair. Every backend
    (numba when installed, torch) on 1 and 2 threads; each timing is the best of
    ``repeats``, all taken in this process in turn with the scipy loop.
    """
    acts = us.read_units(store, "shuffled", 0, max(n_units, n_pairs // 8)).astype(np.float64)
    n_samples, n_sublayers, _ = acts.shape
    rows = acts.transpose(1, 2, 0)  # (S, U, N)
    x = np.ascontiguousarray(rows[1:9].reshape(-1, n_samples)[:n_pairs])
    y = np.ascontiguousarray(rows[2:10].reshape(-1, n_samples)[:n_pairs])
    trajectory = np.ascontiguousarray(acts[:, :, :n_units])
    n_transitions = (n_sublayers - 1) * n_units
    backends = ["numba", "torch"] if mi.numba is not None else ["torch"]
    load_before = os.getloadavg()
    reference = np.array([mi_kde_scipy(x[i], y[i]) for i in range(len(x))])
    out: dict = {"n_samples": n_samples, "n_pairs": len(x), "n_transitions": n_transitions,
                 "default_cpu_backend": mi.KDE_CPU_BACKEND, "numba_version": getattr(mi.numba, "__version__", None),
                 "repeats": repeats}
    for backend in backends:  # warm-up: numba compiles (or loads its cache), torch's first calls
        mi.KDE_CPU_BACKEND = backend
        mi.mi_kde_pairs(x[:2], y[:2])
    timings: dict[str, float] = {"scipy": float("inf")}
    for _ in range(repeats):  # one round = every variant once, so load spikes hit them alike
        timings["scipy"] = min(timings["scipy"], best_seconds(lambda: [mi_kde_scipy(x[i], y[i]) for i in range(len(x))], 1))
        for backend in backends:
            mi.KDE_CPU_BACKEND = backend
            for threads in (1, 2):
                with mi.torch_threads(threads):
                    for kind, call in (("pair", lambda: mi.mi_kde_pairs(x, y)), ("transition", lambda: mi.mi_kde(trajectory))):
                        key = f"{backend}/{threads}/{kind}"
                        # 3 calls in a row: an idle vCPU needs a few ms to wake up for the second thread
                        timings[key] = min(timings.get(key, float("inf")), best_seconds(call, 3))
    scipy_per_pair = timings["scipy"] / len(x)
    out["scipy_seconds_per_pair"] = scipy_per_pair
    for backend in backends:
        mi.KDE_CPU_BACKEND = backend
        with mi.torch_threads(1):
            diff = float(np.nanmax(np.abs(mi.mi_kde_pairs(x, y) - reference)))
        row: dict = {"max_abs_diff_nats": diff}
        for threads in (1, 2):
            per_pair = timings[f"{backend}/{threads}/pair"] / len(x)
            per_transition = timings[f"{backend}/{threads}/transition"] / n_transitions
            row[f"threads_{threads}"] = {
                "seconds_per_pair": per_pair, "speedup_per_pair": scipy_per_pair / per_pair,
                "seconds_per_transition": per_transition, "speedup_per_transition": scipy_per_pair / per_transition,
            }
        out[backend] = row
    mi.KDE_CPU_BACKEND = out["default_cpu_backend"]
    with mi.torch_threads(1):
        out["float64_max_abs_diff_nats"] = float(np.nanmax(np.abs(mi.mi_kde_pairs(x, y, precision="float64") - reference)))
    out["load_average_1min"] = [load_before[0], os.getloadavg()[0]]
    return out


def _run_shard(args: tuple) -> dict:
    store, out_dir, index, start, stop, settings = args
    timings: dict[str, float] = {}
    began = time.perf_counter()
    result = us.compute_shard(store, start, stop, settings, timings)
    path = write_group(Path(out_dir) / f"shard_{index}.zarr", result, attrs=us.shard_attrs(store, start, stop, settings))
    return {
        "path": str(path), "seconds": time.perf_counter() - began, "timings": timings,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_stage(store: Path, shards: int, workers: int, n_shuffles: int) -> dict:
    """Every shard with ``workers`` processes, then the gather; wall-clock seconds."""
    n_units = open_group(store)["original"].shape[2]
    settings = {"shards": shards, "n_shuffles": n_shuffles}
    with tempfile.TemporaryDirectory() as out_dir:
        jobs = [(str(store), out_dir, i, a, b, settings) for i, (a, b) in enumerate(split_units(n_units, shards))]
        began = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_run_shard, jobs))
        gather_began = time.perf_counter()
        arrays, attrs = us.gather([r["path"] for r in results])
        write_group(Path(out_dir) / "unit_stats.zarr", arrays, attrs=attrs)
        wall = time.perf_counter() - began
    per_quantity = {name: sum(r["timings"][name] for r in results) for name in results[0]["timings"]}
    return {
        "shards": shards, "workers": workers, "n_shuffles": n_shuffles, "n_units": n_units,
        "wall_seconds": wall, "gather_seconds": time.perf_counter() - gather_began,
        "shard_seconds": [r["seconds"] for r in results],
        "cpu_seconds_per_quantity": per_quantity,
        "max_rss_mb_per_shard": max(r["max_rss_mb"] for r in results),
        "target_seconds": 120, "ratio_to_target": wall / 120,
    }


def bench_scaling(quick: bool) -> dict:
    """Seconds per quantity of one unit block vs N, D and 2L (one factor at a time)."""
    base = {"n_samples": 330, "n_units": 16, "n_layers": 15}
    grid = {
        "n_samples": [165, 330, 661] if not quick else [100, 200],
        "n_units": [8, 16, 32] if not quick else [8, 16],
        "n_layers": [8, 15, 30] if not quick else [4, 8],
    }
    settings = {"n_shuffles": 200}
    out: dict = {}
    with mi.torch_threads(1):
        for factor, values in grid.items():
            points = []
            for value in values:
                size = {**base, factor: value}
                acts = us.synthetic_activations(size["n_samples"], size["n_layers"], size["n_units"]).astype(np.float64)
                timings: dict[str, float] = {}
                us.unit_block_stats(acts, settings, timings)
                points.append({"value": value, **timings})
            exponents = {}
            for name in points[0]:
                if name == "value":
                    continue
                logx = np.log([p["value"] for p in points])
                logy = np.log([max(p[name], 1e-6) for p in points])
                exponents[name] = float(np.polyfit(logx, logy, 1)[0])
            out[factor] = {"points": points, "exponent": exponents}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--skip-stage", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or (DEFAULT_STORE if DEFAULT_STORE.exists() else None)
        source = str(store) if store else "synthetic"
        if store is None:
            size = (120, 6, 64) if args.quick else (661, 30, 576)
            store = us.write_synthetic_store(Path(tmp) / "activations.zarr", *size, unit_chunk=64)
        report = {
            "store": source,
            "cpu_threads": torch.get_num_threads(),
            "kde_vs_scipy": bench_kde(store, 16 if args.quick else 64, 2 if args.quick else 8, 2 if args.quick else 5),
        }
        if not args.skip_stage:
            report["stage"] = bench_stage(store, shards=4, workers=2, n_shuffles=100 if args.quick else 1000)
        report["scaling"] = bench_scaling(args.quick)
    write_report(report, OUT)

    kde = report["kde_vs_scipy"]
    print(f"store: {source}")
    print(f"KDE MI, N = {kde['n_samples']}, {kde['n_pairs']} pairs / {kde['n_transitions']} transitions; "
          f"scipy {kde['scipy_seconds_per_pair'] * 1e3:.2f} ms/pair; load average {kde['load_average_1min'][0]:.1f} "
          f"-> {kde['load_average_1min'][1]:.1f} on {os.cpu_count()} CPUs")
    print("  backend  threads  ms/pair  speed-up  ms/transition  speed-up  max |diff| (nats)")
    for backend in ("numba", "torch"):
        if backend not in kde:
            continue
        for threads in (1, 2):
            row = kde[backend][f"threads_{threads}"]
            print(f"  {backend:7s}  {threads:7d}  {row['seconds_per_pair'] * 1e3:7.3f}  x{row['speedup_per_pair']:7.1f}  "
                  f"{row['seconds_per_transition'] * 1e3:13.3f}  x{row['speedup_per_transition']:7.1f}  "
                  f"{kde[backend]['max_abs_diff_nats']:.1e}")
    print(f"  float64 (torch) max |diff| {kde['float64_max_abs_diff_nats']:.1e} nats; default CPU backend: {kde['default_cpu_backend']}")
    if "stage" in report:
        stage = report["stage"]
        print(f"whole stage, {stage['shards']} shards on {stage['workers']} processes: {stage['wall_seconds']:.1f} s "
              f"(target {stage['target_seconds']} s), peak RSS per shard {stage['max_rss_mb_per_shard']:.0f} MB")
        print("  CPU seconds per quantity: " + ", ".join(f"{k} {v:.1f}" for k, v in stage["cpu_seconds_per_quantity"].items()))
    for factor, data in report["scaling"].items():
        print(f"scaling with {factor}: " + ", ".join(f"{k} ^{v:.2f}" for k, v in data["exponent"].items()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
