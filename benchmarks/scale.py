"""Memory and time at the paper's scale (issue 12), each measurement in its own process.

- ``capture``: peak RSS of the streamed capture of N = 256, 1024, 4096 sequences with a
  tiny random Llama (D = 256, 16 layers: many sublayers per FLOP, so the states are large
  next to the model: 268 MB for both conditions at N = 4096), against the in-memory capture of the same
  sequences (both conditions held as arrays, as before streaming). Target: streamed RSS
  flat within 10 %.
- ``unit-stats``: a synthetic store of the paper's shape (1000, 64, 4096) x 2 conditions;
  one ``unit_stats_shard`` of 64 units (the paper config's 64 shards) on one thread:
  seconds, peak RSS (against the SLURM profile's mem_mb 4000), and the extrapolation to
  the full stage (64 shards on 64 cluster cores).
- ``cae``: one epoch of the CAE streamed from a synthetic store larger than this
  machine's RAM (``--cae-store-gb``, default 28 GB, SmolLM2's shape 2L = 60, D = 576),
  peak RSS (target < 4 GB) and seconds; and on a store that fits, one epoch in memory
  and streamed, whose ratio is the cost of streaming. The big store is deleted at the end.

Writes benchmarks/results/scale.json (sections are merged, so parts can be rerun):

    python benchmarks/scale.py [capture] [unit-stats] [cae] [--scratch DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/scale.json"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**20, 1), "gpu": "none lent to this task"}


def in_child(kind: str, one_core: bool = False, **kwargs) -> dict:
    """Run ``worker_<kind>(**kwargs)`` in a fresh Python process (its thread pools limited to
    one thread with ``one_core``); its JSON result."""
    command = [sys.executable, __file__, "_worker", kind, json.dumps(kwargs)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if one_core:
        env.update({name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")})
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- capture


TINY_HIDDEN, TINY_LAYERS = 256, 16


def tiny_model_dir(path: Path, hidden: int = TINY_HIDDEN, n_layers: int = TINY_LAYERS) -> Path:
    """A random Llama (vocab 512) with a word-level tokenizer, saved for ``load_model``."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": 3 + i for i in range(509)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(path)
    return path


def random_corpus(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` random sequences of 8-40 tokens (BOS first) and their shuffled twins, as corpus.npz."""
    from rsdyn.capture.corpus import Corpus, save_corpus

    rng = np.random.default_rng(seed)
    original = [np.concatenate([[1], rng.integers(3, 512, size=int(length) - 1)]) for length in rng.integers(8, 41, size=n)]
    shuffled = [np.concatenate([row[:1], rng.permutation(row[1:])]) for row in original]
    width = max(len(row) for row in original)

    def padded(rows):
        out = np.full((n, width), -1, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    save_corpus(Corpus([f"s{i}" for i in range(n)], padded(original), padded(shuffled),
                       np.asarray([len(r) for r in original], dtype=np.int32), "random"), path)
    return path


CAPTURE_SETTINGS = {"device": "cpu", "dtype": "float32", "max_batch_tokens": 4096, "max_batch_size": 64,
                    "bucket_by_length": True, "unit_chunk": 64, "sample_chunk": 256, "shards": 1}


def worker_capture(model_dir: str, corpus: str, out: str, streamed: bool, threads: int) -> dict:
    import torch

    from rsdyn.capture.corpus import load_corpus
    from rsdyn.capture.run import capture_store

    torch.set_num_threads(threads)
    start = time.perf_counter()
    if streamed:
        capture_store(model_dir, corpus, out, CAPTURE_SETTINGS, {"source": "local", "name": "tiny", "path": model_dir})
    else:  # what the capture did before streaming: both conditions in memory, then written
        from rsdyn.capture.capture import capture_last_token
        from rsdyn.models.weights import load_model

        model, _, _ = load_model(model_dir)
        rows = load_corpus(corpus)
        held = [capture_last_token(model, rows.rows(c), max_batch_tokens=4096, desc=c) for c in ("original", "shuffled")]
        assert all(np.isfinite(h).all() for h in held)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def bench_capture(scratch: Path, threads: int, sizes=(256, 1024, 4096)) -> dict:
    model_dir = tiny_model_dir(scratch / "tiny_model")
    rows = []
    for n in sizes:
        corpus = random_corpus(scratch / f"corpus_{n}.npz", n)
        store = scratch / f"capture_{n}.zarr"
        streamed = in_child("capture", model_dir=str(model_dir), corpus=str(corpus), out=str(store), streamed=True, threads=threads)
        held = in_child("capture", model_dir=str(model_dir), corpus=str(corpus), out="", streamed=False, threads=threads)
        shutil.rmtree(store)
        rows.append({"n_sequences": n, "store_mib_per_condition": n * 2 * TINY_LAYERS * TINY_HIDDEN * 4 / 2**20,
                     "streamed": streamed, "in_memory": held})
        print(f"capture N={n}: streamed {streamed['peak_rss_mb']:.0f} MiB, in memory {held['peak_rss_mb']:.0f} MiB", flush=True)
    streamed_rss = [row["streamed"]["peak_rss_mb"] for row in rows]
    return {
        "model": f"random Llama, D = {TINY_HIDDEN}, {TINY_LAYERS} layers, vocab 512; sequences of 8-40 tokens",
        "settings": CAPTURE_SETTINGS,
        "threads": threads,
        "runs": rows,
        "streamed_rss_spread": (max(streamed_rss) - min(streamed_rss)) / min(streamed_rss),
        "target": "streamed peak RSS flat within 10 %",
    }


# --------------------------------------------------------------------------- unit stats


def synthetic_paper_store(path: Path, n: int = 1000, n_layers: int = 32, d_model: int = 4096, sample_chunk: int = 256, unit_chunk: int = 64) -> Path:
    """A data-contract store of random-walk trajectories of the paper's shape, written one
    sample block at a time (never the whole array in memory)."""
    from rsdyn.capture.settings import CONDITIONS
    from rsdyn.core.store import create_streamed_array, streamed_group
    from rsdyn.models.adapters import sublayer_names

    n_sublayers = 2 * n_layers
    rng = np.random.default_rng(0)
    drift = (rng.normal(0, 1, d_model) * np.linspace(0, 3, n_sublayers)[:, None]).astype(np.float32)
    steps = np.linspace(1.0, 0.2, n_sublayers, dtype=np.float32)[None, :, None]
    attrs = {"model_name": "synthetic", "model_id": "synthetic", "model_revision": "none", "family": "llama", "dtype": "float32",
             "n_layers": n_layers, "d_model": d_model, "n_samples": n, "sublayer_names": sublayer_names(n_layers),
             "texts": [f"t{i}" for i in range(n)], "config": {}}
    with streamed_group(path, attrs) as group:
        for index, condition in enumerate(CONDITIONS):
            array = create_streamed_array(group, condition, (n, n_sublayers, d_model), (min(sample_chunk, n), n_sublayers, unit_chunk))
            for start in range(0, n, sample_chunk):
                block_rng = np.random.default_rng([index, start])
                rows = min(sample_chunk, n - start)
                walk = np.cumsum(block_rng.standard_normal((rows, n_sublayers, d_model), dtype=np.float32) * steps, axis=1)
                array[start : start + rows] = drift + walk
        ids = np.full((n, 4), -1, dtype=np.int32)
        for condition in CONDITIONS:
            group.create_array(f"{condition}_ids", data=ids)
    return path


def worker_unit_stats(store: str, out: str, units: int, n_shuffles: int) -> dict:
    from rsdyn.core.store import write_group
    from rsdyn.units.unit_stats import compute_shard, shard_attrs

    settings = {"n_shuffles": n_shuffles}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    result = compute_shard(store, 0, units, settings, timings)
    write_group(out, result, attrs=shard_attrs(store, 0, units, settings))
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "seconds_by_quantity": timings}


def bench_unit_stats(scratch: Path, n_shuffles: int = 1000) -> dict:
    store = scratch / "paper_shape.zarr"
    start = time.perf_counter()
    synthetic_paper_store(store)
    written = time.perf_counter() - start
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    shard = in_child("unit_stats", one_core=True, store=str(store), out=str(scratch / "shard_0.zarr"), units=64, n_shuffles=n_shuffles)
    shutil.rmtree(store)
    shutil.rmtree(scratch / "shard_0.zarr")
    print(f"unit_stats shard of 64 units: {shard['seconds']:.0f} s, {shard['peak_rss_mb']:.0f} MiB", flush=True)
    return {
        "store": {"shape": [1000, 64, 4096], "conditions": 2, "bytes_on_disk": size, "seconds_to_write": written},
        "shard": {"units": 64, "threads": 1, "n_shuffles": n_shuffles, **shard},
        "slurm_mem_mb": 4000,
        "within_mem_mb": shard["peak_rss_mb"] < 4000 * 1e6 / 2**20,
        "extrapolated": {
            "shards": 64,
            "wall_seconds_on_64_cores": shard["seconds"],
            "cpu_hours": 64 * shard["seconds"] / 3600,
            "note": "64 independent shards of 64 units, each on one core: the stage's wall time is one shard's (plus queueing); the gather only concatenates",
        },
    }


# --------------------------------------------------------------------------- CAE


def synthetic_cae_store(path: Path, n: int, n_sublayers: int = 60, d_model: int = 576, sample_chunk: int = 256, unit_chunk: int = 64) -> Path:
    """One condition of random-walk trajectories (growing with depth, low-rank drift), written block by block."""
    from rsdyn.core.store import create_streamed_array, streamed_group

    rng = np.random.default_rng(1)
    mixing = (rng.normal(size=(16, d_model)) / 4).astype(np.float32)
    with streamed_group(path, {"model_name": "synthetic", "sublayer_names": [f"S{s}" for s in range(n_sublayers)]}) as group:
        array = create_streamed_array(group, "original", (n, n_sublayers, d_model), (min(sample_chunk, n), n_sublayers, unit_chunk))
        for start in range(0, n, sample_chunk):
            block_rng = np.random.default_rng([7, start])
            rows = min(sample_chunk, n - start)
            latent = np.cumsum(block_rng.standard_normal((rows, n_sublayers, 16), dtype=np.float32), axis=1)
            noise = block_rng.standard_normal((rows, n_sublayers, d_model), dtype=np.float32) * 0.1
            array[start : start + rows] = latent @ mixing + noise
    return path


def worker_cae(store: str, out: str, data: str, threads: int) -> dict:
    from rsdyn.cae.run import run_cae
    from rsdyn.core.schema import load_schema

    properties = load_schema()["definitions"]["cae"]["properties"]
    settings = {key: spec["default"] for key, spec in properties.items()}
    settings.update(max_epochs=1, data=data, device="cpu", corpus=None)
    start = time.perf_counter()
    info = run_cae(store, out, settings, threads=threads)
    return {"seconds_total": time.perf_counter() - start, "seconds_epoch": info["seconds_per_epoch"], "peak_rss_mb": peak_rss_mb(),
            "train_samples": info["n_samples"]["train"], "val_samples": info["n_samples"]["val"], "data": info["data"]}


def bench_cae(scratch: Path, threads: int, store_gb: float, small_sequences: int = 3000) -> dict:
    per_sequence = 60 * 576 * 4
    free = shutil.disk_usage(scratch).free
    n_big = int(store_gb * 1e9 // per_sequence)
    if free - n_big * per_sequence < 30e9:
        raise SystemExit(f"a {store_gb} GB store would leave less than 30 GB free on {scratch}; lower --cae-store-gb")
    small = synthetic_cae_store(scratch / "cae_small.zarr", small_sequences)
    fits = {mode: in_child("cae", store=str(small), out=str(scratch / f"cae_small_{mode}"), data=mode, threads=threads) for mode in ("memory", "stream")}
    print(f"CAE small store: memory {fits['memory']['seconds_epoch']:.1f} s, stream {fits['stream']['seconds_epoch']:.1f} s per epoch", flush=True)
    big = scratch / "cae_big.zarr"
    try:
        start = time.perf_counter()
        synthetic_cae_store(big, n_big)
        written = time.perf_counter() - start
        size = sum(p.stat().st_size for p in big.rglob("*") if p.is_file())
        print(f"CAE big store: {size / 1e9:.1f} GB written in {written:.0f} s", flush=True)
        streamed = in_child("cae", store=str(big), out=str(scratch / "cae_big_out"), data="stream", threads=threads)
    finally:
        shutil.rmtree(big, ignore_errors=True)
    print(f"CAE big store: {streamed['seconds_epoch']:.0f} s per epoch, {streamed['peak_rss_mb']:.0f} MiB", flush=True)
    per_sample = {name: run["seconds_epoch"] / run["train_samples"] for name, run in (("memory", fits["memory"]), ("stream", fits["stream"]), ("big_stream", streamed))}
    return {
        "shape": "(N, 60, 576) float32, sample_chunk 256, unit_chunk 64; default CAE settings (k = 10, batch 1024), one epoch",
        "threads": threads,
        "fits_in_memory": {"n_sequences": small_sequences, **fits, "epoch_ratio_stream_over_memory": fits["stream"]["seconds_epoch"] / fits["memory"]["seconds_epoch"]},
        "larger_than_ram": {"n_sequences": n_big, "bytes_on_disk": size, "seconds_to_write": written, **streamed,
                            "rss_under_4gb": streamed["peak_rss_mb"] < 4e9 / 2**20},
        "seconds_per_train_sample": per_sample,
        "big_stream_over_small_memory_per_sample": per_sample["big_stream"] / per_sample["memory"],
        "note": "an epoch is the training pass plus the validation pass (which reads every sample chunk again, since validation sequences lie in every chunk)",
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    from common import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["capture", "unit-stats", "cae"], choices=["capture", "unit-stats", "cae"])
    parser.add_argument("--scratch", default=None, help="folder for the synthetic stores (default: a temporary folder in benchmarks/results/scratch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-shuffles", type=int, default=1000)
    parser.add_argument("--cae-store-gb", type=float, default=28.0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["machine"] = machine()
    scratch_root = Path(args.scratch) if args.scratch else ROOT / "benchmarks/results/scratch"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
        scratch = Path(scratch)
        for part in args.parts:
            if part == "capture":
                report["capture"] = bench_capture(scratch, args.threads)
            elif part == "unit-stats":
                report["unit_stats"] = bench_unit_stats(scratch, args.n_shuffles)
            else:
                report["cae"] = bench_cae(scratch, args.threads, args.cae_store_gb)
            write_report(report, out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        result = globals()[f"worker_{sys.argv[2]}"](**json.loads(sys.argv[3]))
        print(json.dumps(result))
    else:
        main()
