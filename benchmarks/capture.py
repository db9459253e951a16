"""Capture throughput on the default model and corpus.

Reports real tokens per second of (a) the hooked, length-bucketed capture, (b) a bare
base-model forward on the same batches with no hooks, (c) the capture with batches in
corpus order, (d) the pipelined capture of a whole store (``capture_into``: blocks of
256 sequences batched on their own rows, written to zarr by the writer thread) against
(e) a bare forward on those per-block batches, and the ratios a/b (target >= 0.9), a/c
(target >= 1.5) and d/e (target >= 0.9). Writes benchmarks/results/capture.json.

    python benchmarks/capture.py [--n-samples 661] [--device auto]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from common import CORPUS, DEFAULT_MODEL_DIR, REPO, default_model, write_report

from rsdyn.capture.capture import capture_last_token, make_batches, pad_batch
from rsdyn.capture.corpus import build_corpus
from rsdyn.capture.run import capture_into
from rsdyn.core.store import streamed_group
from rsdyn.models.adapters import base_model


@torch.inference_mode()
def bare_forward(model, sequences, batches, pad_token, device):
    decoder = base_model(model)
    for batch in batches:
        input_ids, mask, _ = pad_batch([sequences[i] for i in batch], pad_token)
        decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=None, help="subsample of the 661 sequences")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best of each is kept")
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/capture.json"))
    args = parser.parse_args()

    model, tokenizer, device, dtype = default_model(args.model_dir, args.device)
    corpus = build_corpus({**CORPUS, "n_samples": args.n_samples}, tokenizer)
    sequences = corpus.rows("original")
    n_tokens = int(corpus.lengths.sum())
    pad = tokenizer.pad_token_id or 0
    options = {"max_batch_tokens": args.max_batch_tokens, "max_batch_size": args.max_batch_size, "pad_token": pad}
    bucketed = make_batches(corpus.lengths, args.max_batch_tokens, args.max_batch_size, True)
    in_order = make_batches(corpus.lengths, args.max_batch_tokens, args.max_batch_size, False)

    capture_last_token(model, sequences[:8], **options)  # warm-up
    n, chunk = len(sequences), 256
    per_block = [start + batch for start in range(0, n, chunk)
                 for batch in make_batches(corpus.lengths[start : start + chunk], args.max_batch_tokens, args.max_batch_size, True)]
    settings = {"max_batch_tokens": args.max_batch_tokens, "max_batch_size": args.max_batch_size, "bucket_by_length": True,
                "sample_chunk": chunk, "unit_chunk": 64}
    scratch = tempfile.TemporaryDirectory(prefix="rsdyn-capture-bench-")
    stores = iter(range(1000))

    def store():
        with streamed_group(Path(scratch.name) / f"store_{next(stores)}.zarr") as group:
            capture_into(group, model, corpus, 0, n, settings, "auto", pad, n, ("original",))

    variants = {
        "capture_bucketed": lambda: capture_last_token(model, sequences, bucket_by_length=True, **options),
        "bare_forward_bucketed": lambda: bare_forward(model, sequences, bucketed, pad, device),
        "capture_corpus_order": lambda: capture_last_token(model, sequences, bucket_by_length=False, **options),
        "capture_into_zarr_per_block": store,
        "bare_forward_per_block": lambda: bare_forward(model, sequences, per_block, pad, device),
    }
    # Interleaved repeats, best of each: a load that comes and goes hits every variant alike.
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            samples[name].append(timed(run))
    seconds = {name: min(times) for name, times in samples.items()}
    padded = {
        "bucketed": int(sum(corpus.lengths[b].max() * len(b) for b in bucketed)),
        "corpus_order": int(sum(corpus.lengths[b].max() * len(b) for b in in_order)),
    }
    result = {
        "device": device,
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "n_sequences": len(sequences),
        "real_tokens": n_tokens,
        "padded_tokens": padded,
        "seconds": seconds,
        "all_seconds": samples,
        "tokens_per_s": {k: n_tokens / v for k, v in seconds.items()},
        "ratio_capture_vs_bare_forward": seconds["bare_forward_bucketed"] / seconds["capture_bucketed"],
        "ratio_bucketed_vs_corpus_order": seconds["capture_corpus_order"] / seconds["capture_bucketed"],
        "ratio_capture_into_zarr_vs_bare_forward": seconds["bare_forward_per_block"] / seconds["capture_into_zarr_per_block"],
        "targets": {"capture_vs_bare_forward": ">= 0.9", "bucketed_vs_corpus_order": ">= 1.5",
                    "capture_into_zarr_vs_bare_forward": ">= 0.9"},
    }
    scratch.cleanup()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_report(result, args.out)
    for key, value in result["tokens_per_s"].items():
        print(f"{key:>24}: {value:9.0f} tokens/s ({seconds[key]:.1f} s)")
    print(f"capture / bare forward: {result['ratio_capture_vs_bare_forward']:.2f}x   "
          f"bucketed / corpus order: {result['ratio_bucketed_vs_corpus_order']:.2f}x   "
          f"store (pipelined, zarr) / bare forward: {result['ratio_capture_into_zarr_vs_bare_forward']:.2f}x")


if __name__ == "__main__":
    main()
