"""Teleport sweep on the default model: batched with prefix reuse vs one full forward per point.

The PCA basis is a real one: the last-token states of ``--pca-samples`` WikiText-2
sequences are captured and decomposed (``rsdyn.geometry.pca.pca_of_states``, 20 components), and
the grid spans the projected data plus a 10 % margin, as the workflow does.
Times (a) the batched sweep, best of ``--repeats``: ``teleport_layer`` for every layer,
100 grid points each (control forward, prefix cache and one batch per layer, as one job
per layer does), and (b) the naive sweep: ``naive_teleport``, one full forward of the
prompt per point, timed on ``--naive-points`` evenly spaced points per layer and scaled
linearly to the whole grid (its cost is exactly one forward per point). Reports (b)/(a)
and the largest batched-vs-naive difference relative to the largest activation.
Target: (a) <= 30 s on 2 cores. Writes benchmarks/results/teleport.json.

    python benchmarks/teleport.py [--grid-n 10] [--layers 0 7 15 23 29] [--device auto]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common import CORPUS, DEFAULT_MODEL_DIR, REPO, default_model, write_report

from rsdyn.capture.capture import capture_last_token
from rsdyn.capture.corpus import build_corpus
from rsdyn.geometry.pca import pca_of_states
from rsdyn.geometry.teleport import (
    naive_states,
    naive_teleport,
    teleport_layer,
    teleported_states,
    to_residual,
    validate_teleport,
)
from rsdyn.geometry.teleport_grid import grid_for

SETTINGS = {"grid_n": 10, "range": None, "margin": 0.1, "prompt": "I'm sorry, Dave. I'm afraid I can't do that.",
            "arrow_sublayers": 12}


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-n", type=int, default=10)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 7, 15, 23, 29])
    parser.add_argument("--pca-samples", type=int, default=64)
    parser.add_argument("--naive-points", type=int, default=10, help="points per layer run the naive way; its time is scaled to all points")
    parser.add_argument("--repeats", type=int, default=3, help="batched timings: best of this many")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/teleport.json"))
    args = parser.parse_args()

    model, tokenizer, device, dtype = default_model(args.model_dir, args.device)
    settings = {**SETTINGS, "grid_n": args.grid_n, "layers": args.layers}
    prompt_ids = validate_teleport(settings, model.config.num_hidden_layers, tokenizer)

    corpus = build_corpus({**CORPUS, "n_samples": args.pca_samples}, tokenizer)
    states = capture_last_token(model, corpus.rows("original"), pad_token=tokenizer.pad_token_id or 0)
    pca = pca_of_states(states, n_components=20, n_resamples=0)
    mean, components = pca["mean"], pca["components"]
    points = grid_for(settings, pca["projection"])

    teleport_layer(model, prompt_ids, args.layers[0], points[:4], mean, components)  # warm-up
    batched, naive, per_layer = 0.0, 0.0, {}
    worst = 0.0
    naive_rows = np.linspace(0, len(points) - 1, min(args.naive_points, len(points))).round().astype(int)
    for layer in args.layers:
        fast = float("inf")
        for _ in range(args.repeats):
            synchronise(device)
            start = time.perf_counter()
            teleport_layer(model, prompt_ids, layer, points, mean, components)
            synchronise(device)
            fast = min(fast, time.perf_counter() - start)
        start = time.perf_counter()
        naive_teleport(model, prompt_ids, layer, points[naive_rows], mean, components)
        synchronise(device)
        slow = (time.perf_counter() - start) * len(points) / len(naive_rows)
        batched, naive = batched + fast, naive + slow
        per_layer[layer] = {"batched_s": fast, "naive_s": slow}
        sample = to_residual(points[naive_rows], mean, components)
        a, b = teleported_states(model, prompt_ids, layer, sample), naive_states(model, prompt_ids, layer, sample)
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
        print(f"layer {layer:3d}: batched {fast:7.2f} s   naive {slow:7.2f} s   ratio {slow / fast:6.1f}")

    result = {
        "model": Path(args.model_dir).name,
        "device": device,
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "n_points": len(points),
        "layers": args.layers,
        "prompt_tokens": len(prompt_ids),
        "pca_basis": f"PCA (20 components) of {len(states)} captured WikiText-2 last-token states",
        "batched_sweep_s": batched,
        "naive_sweep_s": naive,
        "naive_points_timed_per_layer": len(naive_rows),
        "batched_repeats": args.repeats,
        "speedup_naive_over_batched": naive / batched,
        "target_batched_s": 30.0,
        "max_relative_difference": worst,
        "per_layer": per_layer,
    }
    out = write_report(result, args.out)
    print(f"{len(points)} points x {len(args.layers)} layers: batched {batched:.2f} s, naive {naive:.2f} s, "
          f"naive/batched {naive / batched:.1f}x, max |batched - naive| / max |h| = {worst:.1e}  -> {out}")


if __name__ == "__main__":
    main()
