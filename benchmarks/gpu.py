"""Issue 19 on whatever GPU is present, in one process: the paper's scale on one device.

(1) capture: a bare base-model forward against ``capture_into`` writing a zarr store
    (the capture_shard pipeline: device blocks, copy stream, writer thread) on the same
    length-bucketed batches, tokens per second and their ratio (target >= 0.9);
(2) unit_stats: one shard of the paper's shape (N x 2L x 64 units, ``--shuffles``
    draws per null) with the batched kernels on the device against one CPU thread of
    the CPU kernels, seconds per unit per quantity (target: every quantity >= 1x, the
    shard >= 20x);
(3) CAE: one training epoch (``rsdyn.cae.model.build_model`` + ``train_cae``, data in
    memory) on the device against the CPU on up to 16 threads, per state, at the SmolLM2
    shape (D = 576) and the paper's (D = 4096) (target >= 10x);
(4) Jacobian at D = 4096: ``rsdyn.jacobian.jacobian.sublayer_jacobians`` of whole sequences
    (every transition) and their spectra (``rsdyn.jacobian.spectra``: per matrix and of the
    cumulative product) on the device and on the CPU, extrapolated
    to the rule's 16 sequences x 2L transitions.
The model is Llama 3.1 8B's architecture (config/architectures/llama-3.1-8b.json at
SmolLM2's 49152-token vocabulary) with random weights drawn on the device, in bfloat16
for the capture and float32 for the Jacobians; the sequences are random tokens with
WikiText-like lengths (25-129 tokens, mean 77; a forward's cost does not depend on which
tokens). Targets as in the issue. Writes benchmarks/results/gpu.json. About 5-8 min on
an H200 (``--budget-s`` bounds the Jacobian part).

``--tiny``: every part on the CPU with tiny shapes (a 2-layer D = 64 Llama, 48
sequences, an 8-unit shard...) in well under a minute; the device side is then the CPU
too (the batched unit kernels, the pipelined capture), so the ratios only show that the
code runs. The test suite runs it.

    python benchmarks/gpu.py [--tiny] [--out benchmarks/results/gpu.json]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, write_report

from rsdyn.cae.model import build_model, train_cae
from rsdyn.capture.capture import make_batches
from rsdyn.capture.corpus import Corpus
from rsdyn.capture.pipeline import pad_batch
from rsdyn.capture.run import capture_into
from rsdyn.core.store import streamed_group
from rsdyn.core.threads import torch_threads
from rsdyn.jacobian.jacobian import sublayer_jacobians
from rsdyn.jacobian.spectra import cumulative_spectra, matrix_spectra
from rsdyn.models.adapters import base_model
from rsdyn.models.random_weights import architecture_config
from rsdyn.units.unit_stats import synthetic_activations, unit_block_stats

ARCHITECTURE = REPO / "config" / "architectures" / "llama-3.1-8b.json"

#: the shapes of a full run and of --tiny
FULL = {"sequences": 2000, "sample_chunk": 256, "max_batch_tokens": 8192, "max_batch_size": 64,
        "unit_samples": 1000, "unit_layers": 32, "units": 64, "cpu_units": 4, "shuffles": 1000,
        "cae_states": {576: 262144, 4096: 65536}, "cae_cpu_states": {576: 32768, 4096: 4096}, "cae_layers": 10,
        "jacobian_sequences": 16, "jacobian_tokens": (25, 129), "cpu_spectra_matrices": 2}
TINY = {"sequences": 48, "sample_chunk": 16, "max_batch_tokens": 512, "max_batch_size": 8,
        "unit_samples": 60, "unit_layers": 4, "units": 8, "cpu_units": 8, "shuffles": 50,
        "cae_states": {32: 2048, 64: 2048}, "cae_cpu_states": {32: 2048, 64: 2048}, "cae_layers": 3,
        "jacobian_sequences": 2, "jacobian_tokens": (6, 12), "cpu_spectra_matrices": 2}


class SizedTokenizer:
    """What ``architecture_config`` reads of a tokenizer: SmolLM2's size and special ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def spectra_of(jacobians: torch.Tensor) -> None:
    """What the Jacobian rule computes of one sequence's matrices: the per-matrix spectra
    and those of the cumulative product at every depth."""
    matrix_spectra(jacobians)
    cumulative_spectra(jacobians)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device, dtype: torch.dtype, tiny: bool):
    """Llama 3.1 8B's architecture (or a 2-layer D = 64 Llama with --tiny), random weights
    drawn on ``device`` (the benchmark needs the shape, not the seeded CPU draw)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if tiny:
        config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=1, eos_token_id=2, pad_token_id=2)
    else:
        config = architecture_config(ARCHITECTURE, SizedTokenizer(49152))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    return model.eval()


def synthetic_corpus(n: int, lengths: tuple[int, int], vocab: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    size = rng.integers(lengths[0], lengths[1] + 1, size=n)
    ids = np.full((n, int(size.max())), -1, dtype=np.int32)
    for row, length in enumerate(size):
        ids[row, 0] = 1
        ids[row, 1:length] = rng.integers(3, vocab, size=length - 1)
    return Corpus(texts=[""] * n, original_ids=ids, shuffled_ids=ids, lengths=size.astype(np.int32), source="synthetic")


# --------------------------------------------------------------------------- (1) capture


@torch.inference_mode()
def bare_forward(model, rows, blocks, shape: dict, device: torch.device) -> None:
    """The forwards of the capture's batches (per block, bucketed), no hooks, no copy back."""
    decoder = base_model(model)
    for start, stop in blocks:
        block = rows[start:stop]
        for batch in make_batches([len(s) for s in block], shape["max_batch_tokens"], shape["max_batch_size"], True):
            input_ids, mask, _ = pad_batch([block[i] for i in batch], 2)
            decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
    synchronise(device)


def time_capture(model, device: torch.device, shape: dict, vocab: int, scratch: Path) -> dict:
    corpus = synthetic_corpus(shape["sequences"], (25, 129) if shape is FULL else (6, 30), vocab)
    n = len(corpus.texts)
    settings = {key: shape[key] for key in ("max_batch_tokens", "max_batch_size", "sample_chunk")}
    settings.update(bucket_by_length=True, unit_chunk=64)
    blocks = [(start, min(n, start + shape["sample_chunk"])) for start in range(0, n, shape["sample_chunk"])]
    rows = corpus.rows("original")
    tokens = int(corpus.lengths.sum())

    def capture(index: int) -> None:
        with streamed_group(scratch / f"capture_{index}.zarr") as group:
            capture_into(group, model, corpus, 0, n, settings, "auto", 2, n, ("original",))

    bare_forward(model, rows[: shape["sample_chunk"]], blocks[:1], shape, device)  # warm-up
    seconds = {"bare_forward": [], "capture_into_zarr": []}
    for repeat in range(2):  # interleaved, best of each: a passing load hits both alike
        start = time.perf_counter()
        bare_forward(model, rows, blocks, shape, device)
        seconds["bare_forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        capture(repeat)
        seconds["capture_into_zarr"].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in seconds.items()}
    return {
        "sequences": n, "real_tokens": tokens, "dtype": str(next(model.parameters()).dtype), "seconds": seconds,
        "tokens_per_s": {name: tokens / value for name, value in best.items()},
        "ratio_capture_vs_bare_forward": best["bare_forward"] / best["capture_into_zarr"],
        "target": ">= 0.9 (issue 19.1)",
        "nnsight": "not measured (nnsight is not a dependency of rsdyn)",
    }


# --------------------------------------------------------------------------- (2) unit_stats


QUANTITIES = ("correlations", "mi_kde", "mi_ksg", "rotations")


def per_quantity(timings: dict[str, float], units: int) -> dict[str, float]:
    merged = dict(timings)
    merged["correlations"] = merged.pop("correlations", 0.0) + merged.pop("corr_consecutive", 0.0) + merged.pop("corr_pairs_hist", 0.0)
    return {name: merged.get(name, 0.0) / units for name in QUANTITIES}


def time_unit_stats(device: torch.device, shape: dict) -> dict:
    acts = synthetic_activations(shape["unit_samples"], shape["unit_layers"], shape["units"], seed=0).astype(np.float64)
    settings = {"device": device.type, "n_shuffles": shape["shuffles"]}
    unit_block_stats(acts[:, :, :2], settings, {}, batched=True)  # warm-up (kernels, CUDA context)
    device_timings: dict[str, float] = {}
    start = time.perf_counter()
    unit_block_stats(acts, settings, device_timings, batched=True)
    device_shard = time.perf_counter() - start
    cpu_units = shape["cpu_units"]
    cpu_timings: dict[str, float] = {}
    with torch_threads(1):
        unit_block_stats(acts[:, :, :1], {**settings, "device": "cpu"}, {})  # warm-up (numba)
        start = time.perf_counter()
        unit_block_stats(acts[:, :, :cpu_units], {**settings, "device": "cpu"}, cpu_timings)
        cpu_shard = time.perf_counter() - start
    on_device, on_cpu = per_quantity(device_timings, shape["units"]), per_quantity(cpu_timings, cpu_units)
    return {
        "shape": {"samples": shape["unit_samples"], "sublayers": 2 * shape["unit_layers"], "units": shape["units"],
                  "cpu_units_timed": cpu_units, "n_shuffles": shape["shuffles"]},
        "device_s_per_unit": on_device,
        "cpu_one_thread_s_per_unit": on_cpu,
        "speedup_per_quantity": {name: on_cpu[name] / on_device[name] for name in QUANTITIES},
        "shard_speedup": (cpu_shard / cpu_units) / (device_shard / shape["units"]),
        "targets": {"every quantity": ">= 1", "shard": ">= 20 (issue 19.2)"},
    }


# --------------------------------------------------------------------------- (3) CAE


def epoch_seconds(d_model: int, n_states: int, n_layers: int, device: torch.device) -> float:
    """One ``train_cae`` epoch (batch 1024, the default) on ``n_states`` random states on
    ``device``, in seconds (its history's time, validation included)."""
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(n_states, d_model, generator=generator).to(device)
    val = torch.randn(max(1024, n_states // 16), d_model, generator=generator).to(device)
    model = build_model(d_model, n_layers, 0).to(device)
    train_cae(model, train[:2048], val[:1024], max_epochs=1, patience=1, batch_size=1024, progress=False)  # warm-up
    result = train_cae(model, train, val, max_epochs=1, patience=1, batch_size=1024, progress=False)
    return float(result.history[0]["seconds"])


def time_cae(device: torch.device, shape: dict) -> dict:
    threads = min(16, os.cpu_count() or 1)
    out = {"cpu_threads": threads}
    for d_model, n_states in shape["cae_states"].items():
        on_device = epoch_seconds(d_model, n_states, shape["cae_layers"], device) / n_states
        cpu_states = shape["cae_cpu_states"][d_model]
        with torch_threads(threads):
            on_cpu = epoch_seconds(d_model, cpu_states, shape["cae_layers"], torch.device("cpu")) / cpu_states
        out[f"d{d_model}"] = {"states": n_states, "cpu_states": cpu_states, "device_ms_per_state": 1e3 * on_device,
                              "cpu_ms_per_state": 1e3 * on_cpu, "speedup": on_cpu / on_device}
    out["target"] = ">= 10x a 16-thread CPU epoch (issue 19.3)"
    return out


# --------------------------------------------------------------------------- (4) Jacobian


def time_jacobian(model, device: torch.device, shape: dict, budget_s: float) -> dict:
    corpus = synthetic_corpus(shape["jacobian_sequences"], shape["jacobian_tokens"], model.config.vocab_size, seed=1)
    rows = corpus.rows("original")
    sublayer_jacobians(model, rows[0][:4])  # warm-up
    synchronise(device)
    per_sequence, tokens, jacobians = [], [], None
    began = time.perf_counter()
    for ids in rows:
        start = time.perf_counter()
        jacobians, _ = sublayer_jacobians(model, ids)
        synchronise(device)
        per_sequence.append(time.perf_counter() - start)
        tokens.append(len(ids))
        if time.perf_counter() - began > budget_s:
            break
    start = time.perf_counter()
    spectra_of(jacobians)
    synchronise(device)
    device_spectra = (time.perf_counter() - start) / len(jacobians)
    k = min(shape["cpu_spectra_matrices"], len(jacobians))
    host = jacobians[:k].cpu()
    start = time.perf_counter()
    with torch_threads(min(16, os.cpu_count() or 1)):
        spectra_of(host)
    cpu_spectra = (time.perf_counter() - start) / k
    spectra = min(device_spectra, cpu_spectra)
    n_transitions = int(jacobians.shape[0])
    mean_jacobians = float(np.mean(per_sequence))
    return {
        "d_model": int(jacobians.shape[-1]), "transitions": n_transitions, "sequences_timed": len(per_sequence),
        "tokens_timed": tokens, "jacobians_s_per_sequence": per_sequence,
        "spectra_s_per_matrix": {"device": device_spectra, "cpu": cpu_spectra, "cpu_matrices_timed": k},
        "spectra_faster_on": "device" if device_spectra <= cpu_spectra else "cpu",
        "ratio_spectra_cpu_vs_device": cpu_spectra / device_spectra,
        "rule_estimate_s": shape["jacobian_sequences"] * (mean_jacobians + n_transitions * spectra),
        "rule_estimate_note": f"{shape['jacobian_sequences']} sequences x {n_transitions} transitions, one set of "
                              "weights, the spectra on the faster side; the rule also runs the initial weights (2x)",
    }


# --------------------------------------------------------------------------- main


def finite_ratios(report: dict) -> list[tuple[str, float]]:
    """Every ratio and speed-up of the report (key containing 'ratio' or 'speedup')."""
    found = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else key)
        elif any(word in path.rsplit(".", 1)[-1] for word in ("ratio", "speedup")) or ".speedup_per_quantity." in f".{path}":
            found.append((path, float(value)))

    walk(report, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="everything on the CPU with tiny shapes (the suite's test)")
    parser.add_argument("--device", default="auto", help="auto = CUDA when present")
    parser.add_argument("--budget-s", type=float, default=150.0, help="Jacobian sequences are timed until this is spent")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: capture,unit_stats,cae,jacobian")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gpu.json"))
    args = parser.parse_args()

    shape = TINY if args.tiny else FULL
    if args.tiny:
        device = torch.device("cpu")
    else:
        from rsdyn.models.weights import resolve_device

        device = torch.device(resolve_device(args.device, "--device"))
    skip = set(filter(None, args.skip.split(",")))
    began = time.perf_counter()
    report = {
        "tiny": args.tiny, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "model": "tiny Llama (2 layers, D = 64)" if args.tiny else "Llama 3.1 8B architecture, random weights, vocabulary 49152",
    }
    with tempfile.TemporaryDirectory(prefix="rsdyn-gpu-bench-") as scratch:
        if "capture" not in skip:
            model = build(device, torch.bfloat16 if device.type == "cuda" else torch.float32, args.tiny)
            report["capture"] = time_capture(model, device, shape, model.config.vocab_size, Path(scratch))
            del model
            print("capture:", {k: round(v) for k, v in report["capture"]["tokens_per_s"].items()}, "tokens/s", flush=True)
        if "unit_stats" not in skip:
            report["unit_stats"] = time_unit_stats(device, shape)
            print("unit_stats speed-ups:", report["unit_stats"]["speedup_per_quantity"], flush=True)
        if "cae" not in skip:
            report["cae"] = time_cae(device, shape)
            print("cae:", {k: v["speedup"] for k, v in report["cae"].items() if isinstance(v, dict)}, flush=True)
        if "jacobian" not in skip:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model = build(device, torch.float32, args.tiny)
            report["jacobian"] = time_jacobian(model, device, shape, args.budget_s)
            del model
            print("jacobian rule estimate:", round(report["jacobian"]["rule_estimate_s"], 1), "s", flush=True)
    report["seconds_total"] = time.perf_counter() - began
    bad = [(path, value) for path, value in finite_ratios(report) if not math.isfinite(value)]
    if bad:
        report["non_finite_ratios"] = [path for path, _ in bad]
    print(f"-> {write_report(report, args.out)} ({report['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
