"""Sublayer Jacobians: torch.func (vmap over jacrev/jvp) against a loop of D backward passes,
and the cost of one sample of the jacobian rule.

(a) Jacobians per second on the default model (D = 576, CPU by default) for an attention
and an MLP transition of ``--layer`` on a WikiText-2 sequence: ``rsdyn.jacobian.jacobian_of``
(reverse and forward mode, automatic chunks) against one forward and D
``torch.autograd.grad`` calls, timed on ``--loop-rows`` rows and scaled linearly to D (each
row costs one backward pass). Target: batched >= 5x the loop. Also the largest difference
of the two Jacobians relative to the largest entry.
(b) One sample of the rule: every transition's Jacobian and the spectra
(``rsdyn.jacobian.sample_spectra``), extrapolated to ``--samples`` sequences x the weights
(trained and initial), the rule's work.
(c) With ``--llama8b`` (meant for a GPU): the same as (a) on a random-init decoder layer
shaped like Llama-3.1-8B (D = 4096, 32 heads, 8 key/value heads, MLP 14336) and a
``--llama8b-tokens``-token prompt.

Writes benchmarks/results/jacobian.json.

    python benchmarks/jacobian.py [--layer 15] [--loop-rows 48] [--device cpu] [--llama8b]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the jacobian rule

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import CORPUS, DEFAULT_MODEL_DIR, REPO, write_report  # noqa: E402

from rsdyn.jacobian.jacobian import (  # noqa: E402
    attention_chunk_size,
    jacobian_of,
    sample_spectra,
    sublayer_jacobians,
)
from rsdyn.models.sublayer_maps import SublayerMaps, eager_attention  # noqa: E402


def synchronise(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def loop_jacobian_rows(function, state: torch.Tensor, rows: int) -> tuple[torch.Tensor, float]:
    """The first ``rows`` rows of the Jacobian by one forward and one backward pass per row:
    ``(rows (rows, D_in), seconds)``."""
    start = time.perf_counter()
    x = state.detach().clone().requires_grad_(True)
    output = function(x)
    out = [torch.autograd.grad(output[row], x, retain_graph=row < rows - 1)[0] for row in range(rows)]
    synchronise(state.device)
    return torch.stack(out), time.perf_counter() - start


def time_transitions(model, ids, layer: int, loop_rows: int, repeats: int) -> dict:
    """(a) for the attention (2l) and MLP (2l+1) transitions of ``layer``."""
    device = next(model.parameters()).device
    results = {}
    with eager_attention(model):
        maps = SublayerMaps(model, ids)
        states = sublayer_jacobians(model, ids)[1]
        for transition, kind in ((2 * layer, "attention"), (2 * layer + 1, "mlp")):
            function = lambda x, s=transition: maps(s, x)  # noqa: E731
            state = states[transition]
            dim = state.numel()
            row = {}
            for mode in ("rev", "fwd"):
                chunk = attention_chunk_size(model, len(ids)) if kind == "attention" else None
                jacobian_of(function, state, mode, chunk)  # warm-up
                best = float("inf")
                for _ in range(repeats):
                    synchronise(device)
                    start = time.perf_counter()
                    jacobian, _ = jacobian_of(function, state, mode, chunk)
                    synchronise(device)
                    best = min(best, time.perf_counter() - start)
                row[f"{mode}_s"] = best
                row[f"{mode}_chunk"] = chunk
                row[f"{mode}_jacobians_per_s"] = 1 / best
                if mode == "rev":
                    reference = jacobian
            rows = min(loop_rows, dim)
            looped, seconds = loop_jacobian_rows(function, state, rows)
            row["loop_rows_timed"] = rows
            row["loop_s"] = seconds * dim / rows
            row["loop_jacobians_per_s"] = 1 / row["loop_s"]
            row["speedup_rev_over_loop"] = row["loop_s"] / row["rev_s"]
            row["speedup_fwd_over_loop"] = row["loop_s"] / row["fwd_s"]
            row["max_relative_difference"] = float((looped - reference[:rows]).abs().max() / reference.abs().max())
            results[kind] = row
            print(
                f"{kind:9s} D={dim}: rev {row['rev_s']:.3f} s, fwd {row['fwd_s']:.3f} s, loop {row['loop_s']:.2f} s "
                f"({rows} rows scaled) -> rev {row['speedup_rev_over_loop']:.1f}x, fwd {row['speedup_fwd_over_loop']:.1f}x, "
                f"max diff {row['max_relative_difference']:.1e}", flush=True,
            )
    return results


def llama8b_layer(device: str):
    """One random-init decoder layer shaped like Llama-3.1-8B (float32, tiny vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--sample", type=int, default=0, help="corpus row of the sequence")
    parser.add_argument("--loop-rows", type=int, default=48, help="rows of the loop that are timed; scaled to D")
    parser.add_argument("--repeats", type=int, default=3, help="batched timings: best of this many")
    parser.add_argument("--samples", type=int, default=16, help="sequences of the rule, for the extrapolation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--llama8b", action="store_true", help="also (c), the Llama-3.1-8B-shaped layer")
    parser.add_argument("--llama8b-tokens", type=int, default=128)
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/jacobian.json"))
    args = parser.parse_args()

    from rsdyn.capture.corpus import build_corpus
    from rsdyn.models.weights import load_model, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tokenizer, _ = load_model(args.model_dir, device=device, dtype=torch.float32)
    corpus = build_corpus({**CORPUS, "n_samples": max(args.sample + 1, 16)}, tokenizer)
    ids = corpus.rows("original")[args.sample]
    load = os.getloadavg()
    result = {
        "model": Path(args.model_dir).name, "device": device, "dtype": "float32", "threads": args.threads,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1_5_15_min_at_start": load, "tokens": len(ids), "layer": args.layer,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "target_speedup": 5.0,
    }
    result["transitions"] = time_transitions(model, ids, args.layer, args.loop_rows, args.repeats)

    start, cpu = time.perf_counter(), time.process_time()
    jacobians, _ = sublayer_jacobians(model, ids)
    synchronise(device)
    jacobian_s, jacobian_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    sample_spectra(jacobians, workers=args.threads)
    spectra_s, spectra_cpu = time.perf_counter() - start, time.process_time() - cpu
    per_sample, per_sample_cpu = jacobian_s + spectra_s, jacobian_cpu + spectra_cpu
    result["one_sample"] = {
        "transitions": int(jacobians.shape[0]), "jacobians_s": jacobian_s, "spectra_s": spectra_s,
        "jacobians_cpu_s": jacobian_cpu, "spectra_cpu_s": spectra_cpu,
        "rule_estimate_s": per_sample * args.samples * 2,
        "rule_estimate_cpu_s": per_sample_cpu * args.samples * 2,
        "rule_estimate_note": f"{args.samples} sequences x (trained + initial weights), this sequence's length; "
        "CPU seconds / threads is the wall time on idle cores if the threads stay busy",
    }
    print(f"one sample: Jacobians {jacobian_s:.1f} s ({jacobian_cpu:.1f} CPU s), spectra {spectra_s:.1f} s "
          f"({spectra_cpu:.1f} CPU s); rule estimate {per_sample * args.samples * 2 / 60:.1f} min wall, "
          f"{per_sample_cpu * args.samples * 2 / 60:.1f} CPU min", flush=True)

    if args.llama8b:
        layer_model = llama8b_layer(device)
        prompt = np.random.default_rng(0).integers(3, 256, size=args.llama8b_tokens)
        result["llama8b_layer"] = time_transitions(layer_model, prompt, 0, args.loop_rows, args.repeats)

    result["load_average_1_5_15_min_at_end"] = os.getloadavg()
    out = write_report(result, args.out)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
