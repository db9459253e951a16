"""Benchmark of the CAE rule: training time and epochs to early stop on the default run.

Uses the real capture (``--store``, default results/smollm2-135m/activations.zarr) when
it exists, else a synthetic store of the default size (661 sequences x 60 sublayers x
576 units). Reports (1) the time of one training epoch at several batch sizes as a ratio
to batch 256, (2) ``--batched``: in the same process, one epoch of all default training
seeds (``cae.seeds``) trained at once as one batched model against one epoch of the
single-seed CAE as it was before (``rsdyn.cae.model.train_cae``), alternated, best of
``--repeats``: the ratio, next to the ratio of their matrix-product FLOPs (the seeds'
count), (3) the full default training (on by default; every seed of ``cae.seeds``):
seconds, epochs run and best epoch per seed, validation and test MSE, pooled test R^2,
(4) with ``--compare``, the full training of every option in ``OPTIONS`` (input scaling
x gradient clipping) for seeds 0, 1, 2 (about 30 min on 2 cores), which is how the
defaults were chosen, and (5) with ``--seeds 0,1,2,3,4`` (and ``--reuse`` of finished
runs), the default training of each seed alone: the spread of the README's CAE numbers,
with what they depend on (CPU, threads, library versions). Writes
benchmarks/results/cae.json.

    python benchmarks/cae.py [--store PATH] [--threads 2] [--no-full] [--batched] [--compare] [--seeds 1,2,3,4 --reuse results/smollm2-135m/cae]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_report

from rsdyn.cae.batched import BatchedAutoencoder, train_seeds
from rsdyn.cae.model import build_model, layer_widths, train_cae
from rsdyn.cae.run import run_cae
from rsdyn.cae.settings import split_by_sequence
from rsdyn.core.schema import load_schema
from rsdyn.core.store import open_group, read_group, write_group

ROOT = Path(__file__).resolve().parents[1]


def default_settings() -> dict:
    properties = load_schema()["definitions"]["cae"]["properties"]
    return {key: spec["default"] for key, spec in properties.items()}


def synthetic_store(path: Path, n=661, sublayers=60, d=576, seed=0) -> Path:
    """Trajectories of growing norm on a low-rank drift plus noise (float32, like a capture)."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.normal(size=(1, sublayers, 32)) * np.linspace(0.2, 2, sublayers)[None, :, None], axis=1)
    latent = drift + np.cumsum(rng.normal(size=(n, sublayers, 32)) * 0.3, axis=1)
    mixing = rng.normal(size=(32, d)) / np.sqrt(32)
    states = (latent @ mixing + rng.normal(scale=0.1, size=(n, sublayers, d))).astype(np.float32)
    write_group(path, {"original": states}, attrs={"model_name": "synthetic", "sublayer_names": [f"S{s}" for s in range(sublayers)]})
    return path


def epoch_seconds(train: torch.Tensor, batch_size: int, d_model: int, n_layers: int, max_samples: int = 8192, repeats: int = 2) -> float:
    """Seconds of one training epoch over ``train``, extrapolated from ``max_samples`` samples
    after one warm-up step; the fastest of ``repeats`` timings (the machine may be shared)."""
    model = build_model(d_model, n_layers, 0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    subset = train[:max_samples]

    def step(batch):
        loss = torch.nn.functional.mse_loss(model(batch), batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step(subset[:batch_size])
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for begin in range(0, len(subset), batch_size):
            step(subset[begin : begin + batch_size])
        timings.append(time.perf_counter() - start)
    return min(timings) * len(train) / len(subset)


def step_flops(d_model: int, n_layers: int) -> int:
    """Matrix-product FLOPs of one training sample of one seed: forward 2 x sum d_in d_out,
    backward twice that, less the input gradient of the first layer (not needed)."""
    widths = layer_widths(d_model, n_layers)
    dims = [d_model, *widths, *widths[-2::-1], d_model]
    forward = 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return 3 * forward - 2 * d_model * widths[0]


def batched_vs_single(train: torch.Tensor, val: torch.Tensor, seeds: list[int], settings: dict, repeats: int) -> dict:
    """Seconds of one epoch (validation included) of the single-seed CAE as it was
    (``train_cae``) and of ``seeds`` trained at once (``train_seeds``), alternated,
    fastest of ``repeats`` each, and their ratio."""
    d_model, n_layers, batch = train.shape[1], settings["n_layers"], settings["batch_size"]

    def single() -> float:
        model = build_model(d_model, n_layers, seeds[0])
        began = time.perf_counter()
        train_cae(model, train, val, max_epochs=1, batch_size=batch, seed=seeds[0], progress=False)
        return time.perf_counter() - began

    def batched() -> float:
        model = BatchedAutoencoder.from_seeds(d_model, n_layers, seeds)
        began = time.perf_counter()
        train_seeds(model, train, val, max_epochs=1, batch_size=batch, progress=False)
        return time.perf_counter() - began

    times = {"single": [], "batched": []}
    for _ in range(repeats):
        times["single"].append(single())
        times["batched"].append(batched())
    best = {name: min(values) for name, values in times.items()}
    return {"seeds": seeds, "single_epoch_seconds": best["single"], "batched_epoch_seconds": best["batched"],
            "ratio": best["batched"] / best["single"], "flop_ratio": len(seeds), "all_seconds": times,
            "gflop_per_epoch_per_seed": step_flops(d_model, n_layers) * len(train) / 1e9}


OPTIONS = {
    "global, no clip": {"input_scaling": "global", "grad_clip": None},
    "global, clip 1": {"input_scaling": "global", "grad_clip": 1.0},
    "unit, no clip": {"input_scaling": "unit", "grad_clip": None},
    "unit, clip 1": {"input_scaling": "unit", "grad_clip": 1.0},
}
SEEDS = (0, 1, 2)
FULL_KEYS = ("seeds", "epochs", "epochs_run", "best_epoch", "stopped_early", "train_seconds", "seconds_per_epoch", "best_val_loss", "test_loss", "test_r2_pooled")


def full_training(store: Path, out: Path, settings: dict, threads: int) -> dict:
    """Train with ``settings`` (every seed of ``cae.seeds``) and return the headline numbers,
    the median per-sublayer test R^2 (own mean; mean over seeds) and each seed's validation curve."""
    info = run_cae(store, out, settings, threads=threads)
    arrays = read_group(out / "embedding.zarr")
    row = {key: info[key] for key in FULL_KEYS}
    row["median_ev_per_sublayer"] = float(np.nanmedian(arrays["ev_per_sublayer"].mean(axis=0)))
    row["median_ev_pooled_reference"] = float(np.nanmedian(arrays["ev_per_sublayer_pooled_reference"].mean(axis=0)))
    curves: dict[int, list[float]] = {}
    with open(out / "training_curve.csv") as handle:
        for record in csv.DictReader(handle):
            curves.setdefault(int(record["seed"]), []).append(float(record["val_loss"]))
    row["val_curve"] = curves
    row["worst_val_jump"] = max(worst_jump(curve) for curve in curves.values())
    return row


def environment(threads: int) -> dict:
    """What bit-for-bit CAE numbers depend on besides the config: CPU, threads, libraries."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "threads": threads, "torch": torch.__version__, "numpy": np.__version__,
            "blas": torch.__config__.show().split("BLAS_INFO=")[-1].split(",")[0] if "BLAS_INFO=" in torch.__config__.show() else "see torch.__config__",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def seed_row(store: Path, out: Path, settings: dict, threads: int) -> dict:
    """Full default training of one seed alone: headline numbers and the Fig. 3 summary rows."""
    run_cae(store, out, dict(settings, seeds=[settings["seed"]]), threads=threads)
    return summarise(out)


def summarise(out: Path) -> dict:
    """Headline numbers and Fig. 3 summary rows of a finished CAE output folder."""
    from rsdyn.cae.summary import summary_fig3

    info = json.loads((out / "training.json").read_text())
    row = {key: value[0] if isinstance(value, list) and len(value) == 1 else value for key, value in ((k, info[k]) for k in FULL_KEYS)}
    row.update(seed=info["settings"]["seed"], threads=info["threads"])
    rows = summary_fig3(read_group(out / "embedding.zarr"))
    for name in ("cae_ev_block_early", "cae_ev_block_late", "cae_ev_block_late_minus_early", "cae_step_distance_late_over_early",
                 "cae_ev_across_early", "cae_ev_across_late", "cae_ev_across_minus_mean_predictor",
                 "cae_ev_own_mean_early", "cae_ev_own_mean_late", "cae_test_r2_pooled"):
        row[name] = rows[name]["value"]
        if "verdict" in rows[name]:
            row[f"{name}_interval"], row[f"{name}_verdict"] = rows[name]["interval"], rows[name]["verdict"]
    return row


def worst_jump(curve: list[float]) -> float:
    """Largest ratio of a validation MSE to the lowest one before it (1 = never rose)."""
    best, worst = np.inf, 1.0
    for value in curve:
        worst = max(worst, value / best) if np.isfinite(best) else worst
        best = min(best, value)
    return float(worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "results/smollm2-135m/activations.zarr"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-full", action="store_true", help="skip the full default training")
    parser.add_argument("--compare", action="store_true", help="train every option of OPTIONS for seeds 0, 1, 2")
    parser.add_argument("--seeds", default="", help="comma-separated seeds to train with the default settings (the README's spread), e.g. 0,1,2,3,4")
    parser.add_argument("--reuse", nargs="*", default=[], help="finished CAE output folders (e.g. the DAG's results/smollm2-135m/cae) to add to the spread")
    parser.add_argument("--no-epochs", action="store_true", help="skip the per-batch-size epoch timings")
    parser.add_argument("--batched", action="store_true", help="time one epoch of all default seeds at once against one epoch of the single-seed CAE")
    parser.add_argument("--repeats", type=int, default=3, help="alternated timings of --batched (the fastest of each counts)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cae.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = default_settings()
    settings["device"] = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store)
        source = "real capture"
        if not store.exists():
            store, source = synthetic_store(Path(tmp) / "activations.zarr"), "synthetic"
        states = open_group(store)[settings["condition"]][...]
        n, sublayers, d = states.shape
        split = split_by_sequence(n, settings["val_fraction"], settings["test_fraction"], settings["seed"])
        train = torch.from_numpy(states[split["train"]].reshape(-1, d))
        report = {"store": str(args.store) if source == "real capture" else "synthetic", "shape": [n, sublayers, d], "threads": args.threads, "settings": settings}
        report["epoch_seconds"] = {}
        print(f"CAE benchmark on {source} {n} x {sublayers} x {d}, {args.threads} threads, {len(train)} training samples")
        print(f"{'batch':>6} {'s/epoch':>8} {'ratio to 256':>12}")
        baseline = None
        for batch in () if args.no_epochs else (256, 128, 512, 1024, 2048):
            seconds = epoch_seconds(train, batch, d, settings["n_layers"])
            baseline = baseline or seconds
            report["epoch_seconds"][batch] = {"seconds": seconds, "ratio_to_256": seconds / baseline}
            print(f"{batch:>6} {seconds:>8.2f} {seconds / baseline:>12.2f}")
        if args.batched:
            val = torch.from_numpy(states[split["val"]].reshape(-1, d))
            row = batched_vs_single(train, val, settings["seeds"], settings, args.repeats)
            report["batched"] = row
            print(
                f"one epoch: single seed (before) {row['single_epoch_seconds']:.2f} s, {len(row['seeds'])} seeds at once "
                f"{row['batched_epoch_seconds']:.2f} s: ratio {row['ratio']:.2f} (FLOP ratio {row['flop_ratio']}; "
                f"{row['gflop_per_epoch_per_seed']:.0f} GFLOP of products per seed and epoch)", flush=True,
            )
        if not args.no_full:
            row = full_training(store, Path(tmp) / "cae", settings, args.threads)
            report["full"] = row
            print(
                f"full default training, seeds {row['seeds']}: {row['train_seconds']:.0f} s, {row['epochs']} epochs "
                f"(per seed {row['epochs_run']}, best {row['best_epoch']}, early stop {row['stopped_early']}), "
                f"{row['seconds_per_epoch']:.2f} s/epoch at batch {settings['batch_size']} (validation included); "
                f"best val MSE {[round(v, 2) for v in row['best_val_loss']]}, test MSE {[round(v, 2) for v in row['test_loss']]}, "
                f"pooled test R^2 {[round(v, 3) for v in row['test_r2_pooled']]}"
            )
        if args.compare:
            report["compare"] = {}
            print(f"{'option':>16} {'seed':>4} {'epochs':>6} {'best':>4} {'val MSE':>8} {'test MSE':>8} {'R^2':>6} {'med R^2 own':>11} {'worst jump':>10}")
            for name, option in OPTIONS.items():
                for seed in SEEDS:
                    row = full_training(store, Path(tmp) / f"cae_{len(report['compare'])}", dict(settings, **option, seed=seed, seeds=[seed]), args.threads)
                    report["compare"][f"{name}, seed {seed}"] = row
                    print(
                        f"{name:>16} {seed:>4} {row['epochs_run'][0]:>6} {row['best_epoch'][0]:>4} {row['best_val_loss'][0]:>8.2f} "
                        f"{row['test_loss'][0]:>8.2f} {row['test_r2_pooled'][0]:>6.3f} {row['median_ev_per_sublayer']:>11.3f} "
                        f"{row['worst_val_jump']:>10.2f}"
                    )
        if args.seeds or args.reuse:
            report["environment"] = environment(args.threads)
            report["seeds"] = {}
            for folder in args.reuse:
                row = summarise(Path(folder))
                report["seeds"][row["seed"]] = row
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                row = seed_row(store, Path(tmp) / f"seed_{seed}", dict(settings, seed=seed), args.threads)
                report["seeds"][seed] = row
                print(f"seed {seed}: {json.dumps({k: v for k, v in row.items() if not isinstance(v, list)})}", flush=True)
            numbers = [key for key, value in next(iter(report["seeds"].values())).items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
            report["seed_spread"] = {key: [min(r[key] for r in report["seeds"].values()), max(r[key] for r in report["seeds"].values())] for key in numbers}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
