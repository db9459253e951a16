"""Benchmark of the rotation statistics (per-unit nulls of R) and of the population stage.

1. The four per-unit nulls of R (point, increment, layer shuffle, phase surrogate) at
   n_shuffles = 1000 on D = 576 sample-mean trajectories of 2L = 60 sublayers (the
   default run's when results/smollm2-135m/activations.zarr exists, else synthetic),
   BLAS and numba on one thread; baseline in the same process: the NumPy definition
   ``tangent_turns(phase_portrait(...))`` on the same layer-shuffle draws.
2. How the nulls grow with D (576 ... 4096 units, synthetic trajectories).
3. The population stage on one condition (jPCA, per-window jPCA, TME fits and 100
   surrogates, per-unit R on TME) with 2 BLAS threads, split by part; and how the
   TME fit of the full (N, 2L, D) states grows with D (synthetic, N = 661, 2L = 60).

Timings are the best of ``--repeats`` rounds; the load average is recorded (the
machine may be shared). Writes benchmarks/results/rotations.json.
Usage: python benchmarks/rotations.py [--store PATH] [--quick] [--max-tme-d 4096]
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from common import REPO, best_seconds, write_report  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from rsdyn.core.store import open_group  # noqa: E402
from rsdyn.population import population as pop  # noqa: E402
from rsdyn.population import tme  # noqa: E402
from rsdyn.population.jpca import pc_scores  # noqa: E402
from rsdyn.units import rotations as rot  # noqa: E402
from rsdyn.units.unit_stats import synthetic_activations  # noqa: E402

DEFAULT_STORE = REPO / "results" / "smollm2-135m" / "activations.zarr"
OUT = REPO / "benchmarks" / "results" / "rotations.json"
NULLS = ("point_shuffle", "increment_shuffle", "layer_shuffle", "phase")


def load_states(store: Path, condition: str = "original") -> tuple[np.ndarray, str]:
    if store.exists():
        return np.asarray(open_group(store)[condition][...], dtype=np.float64), str(store)
    return synthetic_activations(661, 30, 576, seed=0).astype(np.float64), "synthetic (661, 60, 576)"


def per_unit_nulls(trajectories: np.ndarray, n_shuffles: int, repeats: int) -> dict:
    """Seconds per null on (D, 2L) trajectories, and the NumPy baseline of the layer shuffle."""
    rot.null_rotations(trajectories[:2], "point_shuffle", 2, 0)  # compile the kernels
    seconds = {null: best_seconds(lambda null=null: rot.null_rotations(trajectories, null, n_shuffles, 0), repeats) for null in NULLS}
    index = rot.null_draws("layer_shuffle", trajectories.shape[1], n_shuffles, 0)
    subset = trajectories[:64]  # the NumPy path materialises (U, K, 2L): time 64 units, scale to D
    numpy_seconds = best_seconds(lambda: rot.tangent_turns(*rot.phase_portrait(subset[:, index])), repeats) * len(trajectories) / len(subset)
    return {
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
        "numpy_layer_shuffle_seconds_scaled": numpy_seconds,
        "speedup_layer_shuffle_vs_numpy": numpy_seconds / seconds["layer_shuffle"],
    }


def population_parts(states: np.ndarray, n_surrogates: int) -> dict:
    """Seconds of each part of one condition of the population stage."""
    settings = {**pop.DEFAULT_TME, "n_surrogates": n_surrogates}
    out = {}
    began = time.perf_counter()
    scores, _ = pc_scores(states, 6)
    out["pca_seconds"] = time.perf_counter() - began
    began = time.perf_counter()
    result = pop.jpca_with_tme(scores, settings, stream=0)
    out["jpca_with_tme_seconds"] = time.perf_counter() - began
    out["jpca_tme_newton_steps"] = int(result["tme_iterations"])
    began = time.perf_counter()
    rotations = pop.tme_rotations(states, settings)
    out["tme_rotations_seconds"] = time.perf_counter() - began
    out["tme_rotations_newton_steps"] = int(rotations["tme_iterations"])
    out["tme_rotations_constraint_error"] = float(rotations["tme_constraint_error"])
    began = time.perf_counter()
    pop.condition_population(states, {"k": 6}, settings)
    out["condition_total_seconds"] = time.perf_counter() - began
    return out


def checkpoint(report: dict) -> None:
    """Write what is measured so far (a long series stopped early keeps its rows)."""
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    write_report({**previous, **report}, OUT)


def tme_fit_growth(d_values: list[int], n_samples: int = 661, n_sublayers: int = 60, report: dict | None = None) -> list[dict]:
    rows = []
    for d_model in d_values:
        states = synthetic_activations(n_samples, n_sublayers // 2, d_model, seed=1).astype(np.float64)
        began = time.perf_counter()
        model = tme.fit_tme(states)
        fit = time.perf_counter() - began
        began = time.perf_counter()
        tme.sample_tme_mode0_mean(model, 100, seed=0)
        rows.append({"d_model": d_model, "fit_seconds": fit, "newton_steps": model.iterations,
                     "sample_100_means_seconds": time.perf_counter() - began, "constraint_error": model.constraint_error,
                     "load_average": os.getloadavg()})
        del states, model
        if report is not None:
            checkpoint({**report, "tme_fit_growth": {"rows": rows}})
    return rows


def exponent(rows: list[dict], key: str) -> float:
    d = np.log([row["d_model"] for row in rows])
    return float(np.polyfit(d, np.log([row[key] for row in rows]), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--quick", action="store_true", help="fewer draws and sizes (a smoke check of the script)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tme-d", type=int, default=2304, help="largest D of the TME growth series (4096 needs ~6 GB)")
    parser.add_argument("--parts", default="nulls,population", help="comma-separated: nulls, population")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    n_shuffles = 100 if args.quick else 1000
    states, source = load_states(args.store)
    report = json.loads(OUT.read_text()) if OUT.exists() else {}  # keep the parts not run now
    report.update(source=source, load_average_start=os.getloadavg(), n_shuffles=n_shuffles)
    if "population" in parts:
        report.pop("tme_fit_growth", None)

    if "nulls" in parts:
        report.update(nulls_part(states, n_shuffles, args))
    if "population" in parts:
        report.update(population_part(states, args))
    report["load_average_end"] = os.getloadavg()

    write_report(report, OUT)
    print(json.dumps(report, indent=1))
    print(f"wrote {OUT}")


def nulls_part(states: np.ndarray, n_shuffles: int, args) -> dict:
    """Part 1 and 2: the four per-unit nulls at D = 576 and their growth with D, one thread."""
    report = {}
    with threadpool_limits(1):
        trajectories = np.ascontiguousarray(states.mean(axis=0).T)
        report["per_unit_nulls_D576"] = per_unit_nulls(trajectories, n_shuffles, args.repeats)
        growth = []
        for d_model in ([576, 1152] if args.quick else [576, 1152, 2304, 4096]):
            synthetic = synthetic_activations(3, 30, d_model, seed=2).mean(axis=0).T.astype(np.float64)
            seconds = best_seconds(lambda: [rot.null_rotations(synthetic, null, n_shuffles, 0) for null in NULLS], 1)
            growth.append({"d_model": d_model, "four_nulls_seconds": seconds})
        report["per_unit_nulls_growth"] = {"rows": growth, "exponent_in_D": exponent(growth, "four_nulls_seconds")}
        report["per_unit_nulls_load_average"] = os.getloadavg()
    return report


def population_part(states: np.ndarray, args) -> dict:
    """Part 3: the population stage on one condition and the TME fit's growth with D, two threads."""
    report = {}
    with threadpool_limits(2):
        report["population_one_condition"] = population_parts(states, 20 if args.quick else 100)
        checkpoint(report)
        d_values = [d for d in ([144, 288] if args.quick else [576, 1152, 2304, 4096]) if d <= args.max_tme_d]
        rows = tme_fit_growth(d_values, report=report)
        report["tme_fit_growth"] = {"rows": rows, "exponent_in_D": exponent(rows, "fit_seconds") if len(rows) > 1 else None}
        report["population_load_average"] = os.getloadavg()
    return report


if __name__ == "__main__":
    main()
