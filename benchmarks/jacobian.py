"""The jacobian rule's cost: where the time goes, and today's code against the previous one
in the same process (ratios; a loaded machine slows both alike).

(a) One attention and one MLP transition of ``--layer`` on the default model (D = 576):
``rsdyn.jacobian.jacobian.jacobian_of`` under eager attention (the previous code, chunked)
and under the last-token attention (``jacobian.attention: last_token``), reverse and
forward mode, against one forward and D ``torch.autograd.grad`` calls (timed on
``--loop-rows`` rows, scaled to D); the largest difference relative to the largest entry.
(b) One sequence, every transition (a "set"): the previous rule's work (eager attention,
torch on ``--threads`` threads, the previous spectra: eigenvalues of J - I, SVDs of J and of
J - I, the float64 QR product with an SVD per depth, on ``--threads`` threads) against
today's pieces on one thread: Jacobians, per-matrix spectra (one eigendecomposition, no
SVD), the product (a matrix product per transition, an SVD per product depth), a surrogate's
construction. Wall and CPU seconds.
(c) The default design (``jacobian`` section of config/config.yaml) on ``--sequences``
sequences through ``rsdyn.jacobian.sample.design_groups`` with 1 worker and with
``--threads`` workers: CPU seconds per trained, initial and surrogate set, the workers'
speed-up, and the estimate of the whole default rule on ``--threads`` idle cores.
(d) With ``--llama8b`` (meant for a GPU): ``rsdyn.jacobian.devices.time_design`` on a
random Llama-3.1-8B-shaped model.

Writes benchmarks/results/jacobian.json.

    python benchmarks/jacobian.py [--layer 15] [--sequences 4] [--threads 2] [--llama8b]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the jacobian rule

import torch  # noqa: E402
import yaml  # noqa: E402
from common import CORPUS, DEFAULT_MODEL_DIR, REPO, write_report  # noqa: E402

from rsdyn.core.threads import torch_threads  # noqa: E402
from rsdyn.jacobian.attention import LastTokenMaps, attention_implementation  # noqa: E402
from rsdyn.jacobian.devices import synchronise, time_design  # noqa: E402
from rsdyn.jacobian.jacobian import (  # noqa: E402
    attention_chunk_size,
    baseline_positions,
    jacobian_of,
    product_depths,
    select_samples,
    sublayer_jacobians,
)
from rsdyn.jacobian.sample import SpectraOptions, design_groups  # noqa: E402
from rsdyn.jacobian.spectra import ProductChain, matrix_spectra, singular_values  # noqa: E402
from rsdyn.jacobian.surrogates import generator, svd_matched  # noqa: E402
from rsdyn.models.sublayer_maps import SublayerMaps  # noqa: E402


class Clock:
    """Wall and CPU (process) seconds of a block, added under a name."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class Block:
            def __enter__(self):
                self.start = (time.perf_counter(), time.process_time())

            def __exit__(self, *exc):
                entry = clock.seconds.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
                entry["wall_s"] += time.perf_counter() - self.start[0]
                entry["cpu_s"] += time.process_time() - self.start[1]

        return Block()


# --------------------------------------------------------------------------- the previous spectra (for the ratio)


def previous_spectra(jacobians: torch.Tensor, workers: int) -> None:
    """The previous rule's spectra of one set (S, D, D): per matrix the eigenvalues of J - I and
    the SVDs of J and of J - I on ``workers`` threads of one LAPACK thread, and the float64
    QR re-orthonormalised product with an SVD of its triangle per depth, in parallel."""
    def per_matrix(matrix):
        update = matrix - torch.eye(matrix.shape[-1], dtype=matrix.dtype)
        torch.linalg.eigvals(update)
        torch.linalg.svdvals(matrix)
        torch.linalg.svdvals(update)

    def product(stack):
        stack = stack.double()
        basis = torch.eye(stack.shape[-1], dtype=torch.float64)
        triangle = basis.clone()
        for matrix in stack:
            basis, upper = torch.linalg.qr(matrix @ basis)
            triangle = upper @ triangle
            triangle = triangle / triangle.abs().max()
            torch.linalg.svdvals(triangle)

    with torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        chain = pool.submit(product, jacobians)
        list(pool.map(per_matrix, jacobians))
        chain.result()


# --------------------------------------------------------------------------- (a) transitions


def loop_jacobian_rows(function, state: torch.Tensor, rows: int) -> tuple[torch.Tensor, float]:
    """The first ``rows`` rows of the Jacobian by one forward and one backward pass per row."""
    start = time.perf_counter()
    x = state.detach().clone().requires_grad_(True)
    output = function(x)
    out = [torch.autograd.grad(output[row], x, retain_graph=row < rows - 1)[0] for row in range(rows)]
    synchronise(state.device)
    return torch.stack(out), time.perf_counter() - start


def time_transitions(model, ids, layer: int, loop_rows: int, repeats: int) -> dict:
    """(a) for the attention (2l) and MLP (2l+1) transitions of ``layer``."""
    device = next(model.parameters()).device
    states = sublayer_jacobians(model, ids)[1]
    results = {}
    for transition, kind in ((2 * layer, "attention"), (2 * layer + 1, "mlp")):
        row: dict = {}
        reference = None
        for attention in ("eager", "last_token"):
            maps = (LastTokenMaps if attention == "last_token" else SublayerMaps)(model, ids)
            with attention_implementation(model, attention):
                def function(x, s=transition, maps=maps):
                    return maps(s, x)
                for mode in ("rev", "fwd"):
                    chunk = attention_chunk_size(model, len(ids)) if kind == "attention" and attention == "eager" else None
                    jacobian_of(function, states[transition], mode, chunk)  # warm-up
                    best, cpu = float("inf"), float("inf")
                    for _ in range(repeats):
                        synchronise(device)
                        start, start_cpu = time.perf_counter(), time.process_time()
                        jacobian, _ = jacobian_of(function, states[transition], mode, chunk)
                        synchronise(device)
                        best, cpu = min(best, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
                    row[f"{attention}_{mode}_s"], row[f"{attention}_{mode}_cpu_s"] = best, cpu
                    if reference is None:
                        reference = jacobian
                    row[f"{attention}_{mode}_max_relative_difference"] = float((jacobian - reference).abs().max() / reference.abs().max())
                if attention == "eager":
                    rows = min(loop_rows, states.shape[1])
                    looped, seconds = loop_jacobian_rows(function, states[transition], rows)
                    row["loop_s"] = seconds * states.shape[1] / rows
                    row["loop_max_relative_difference"] = float((looped - reference[:rows]).abs().max() / reference.abs().max())
        row["speedup_last_token_over_eager_rev"] = row["eager_rev_s"] / row["last_token_rev_s"]
        row["speedup_last_token_over_loop"] = row["loop_s"] / row["last_token_rev_s"]
        results[kind] = row
        print(f"{kind:9s}: eager rev {row['eager_rev_s']:.3f} s, last-token rev {row['last_token_rev_s']:.3f} s "
              f"(x{row['speedup_last_token_over_eager_rev']:.1f}), fwd {row['last_token_fwd_s']:.3f} s, loop {row['loop_s']:.2f} s, "
              f"max diff {row['last_token_rev_max_relative_difference']:.1e}", flush=True)
    return results


# --------------------------------------------------------------------------- (b) one set


def time_one_set(model, ids, threads: int) -> dict:
    """(b): the previous rule's work on one sequence against today's pieces on one thread."""
    clock = Clock()
    with torch_threads(threads), clock("previous_jacobians"):
        jacobians, _ = sublayer_jacobians(model, ids, attention="eager")
    with clock("previous_spectra"):
        previous_spectra(jacobians, threads)
    with torch_threads(1):
        with clock("jacobians"):
            sublayer_jacobians(model, ids)
        chain, rng = ProductChain(), generator(0)
        eye = torch.eye(jacobians.shape[-1], dtype=jacobians.dtype)
        depths = set(product_depths(len(jacobians)))
        for transition, matrix in enumerate(jacobians):
            with clock("matrix_spectra"):
                matrix_spectra(matrix)
            with clock("product"):
                chain.step(matrix)
                if transition in depths:
                    chain.spectra()
            with clock("svd_matched_construction"):
                svd_matched(singular_values(matrix - eye), rng)
    seconds = clock.seconds
    previous = sum(seconds[key]["wall_s"] for key in ("previous_jacobians", "previous_spectra"))
    today = sum(seconds[key]["wall_s"] for key in ("jacobians", "matrix_spectra", "product"))
    out = {"transitions": int(jacobians.shape[0]), "seconds": seconds, "previous_wall_s": previous, "today_one_thread_wall_s": today,
           "previous_cpu_s": sum(seconds[key]["cpu_s"] for key in ("previous_jacobians", "previous_spectra")),
           "today_cpu_s": sum(seconds[key]["cpu_s"] for key in ("jacobians", "matrix_spectra", "product"))}
    out["speedup_cpu"] = out["previous_cpu_s"] / out["today_cpu_s"]
    for key, entry in seconds.items():
        print(f"  {key:26s} wall {entry['wall_s']:6.2f} s  cpu {entry['cpu_s']:6.2f} s", flush=True)
    print(f"one set: previous {previous:.1f} s wall ({threads} threads), {out['previous_cpu_s']:.1f} CPU s; "
          f"today {today:.1f} s wall on one thread, {out['today_cpu_s']:.1f} CPU s (x{out['speedup_cpu']:.1f} in CPU s)", flush=True)
    return out


# --------------------------------------------------------------------------- (c) the design


def time_design_groups(model, sequences, rows, settings: dict, threads: int) -> dict:
    """(c): design_groups on ``sequences`` with every one a baseline sequence, 1 worker and ``threads``."""
    surrogates = tuple(kind for kind in settings["baselines"] if kind != "initial")
    options = SpectraOptions(surrogates=surrogates, surrogate_draws=settings["surrogate_draws"])
    init_seeds = settings["init_seeds"][:1] if "initial" in settings["baselines"] else []
    out = {}
    for workers in sorted({1, threads}):
        start, cpu = time.perf_counter(), time.process_time()
        _, seconds = design_groups(model, sequences, rows, range(len(sequences)), init_seeds, options, workers, workers)
        out[f"workers_{workers}"] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "groups_s": seconds}
    n = len(sequences)
    one = {group: entry["cpu_s"] for group, entry in out["workers_1"]["groups_s"].items()}
    initial_set = one.get("initial", 0.0) / n
    draws = len(surrogates) * settings["surrogate_draws"]
    out["per_set_one_thread_cpu_s"] = {"initial": initial_set, "trained_with_surrogates": one["trained"] / n,
                                       "trained": initial_set, "surrogate_draw": (one["trained"] / n - initial_set) / max(draws, 1)}
    out["workers_speedup"] = out["workers_1"]["wall_s"] / out[f"workers_{threads}"]["wall_s"]
    print(f"design on {n} sequences: 1 worker {out['workers_1']['wall_s']:.1f} s, {threads} workers "
          f"{out[f'workers_{threads}']['wall_s']:.1f} s (x{out['workers_speedup']:.2f})", flush=True)
    return out


def estimate_rule(per_set: dict, settings: dict, speedup: float) -> dict:
    """Wall seconds of the default rule on idle cores from one-thread CPU seconds per set (on a
    loaded machine CPU seconds stay near the idle wall time of one thread) and the workers'
    speed-up (measured wall over wall: only meaningful on idle cores)."""
    n, base = settings["n_samples"], settings["baseline_samples"]
    surrogates = [kind for kind in settings["baselines"] if kind != "initial"]
    seeds = len(settings["init_seeds"]) if "initial" in settings["baselines"] else 0
    one_thread = (n * per_set["trained"] + seeds * base * per_set["initial"]
                  + base * len(surrogates) * settings["surrogate_draws"] * per_set["surrogate_draw"])
    return {"one_thread_s": one_thread, "estimate_s": one_thread / speedup, "design": settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--loop-rows", type=int, default=48, help="rows of the loop that are timed; scaled to D")
    parser.add_argument("--repeats", type=int, default=3, help="batched timings: best of this many")
    parser.add_argument("--sequences", type=int, default=4, help="sequences of the design timing (c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["transitions", "set", "design"])
    parser.add_argument("--llama8b", action="store_true", help="also (d), the Llama-3.1-8B-shaped model")
    parser.add_argument("--llama8b-tokens", type=int, default=77)
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/jacobian.json"))
    args = parser.parse_args()

    from rsdyn.capture.corpus import build_corpus
    from rsdyn.models.weights import load_model, resolve_device

    settings = yaml.safe_load((REPO / "config/config.yaml").read_text())["jacobian"]
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["definitions"]["jacobian"]["properties"]
    settings = {**{key: spec.get("default") for key, spec in schema.items()}, **settings}
    device = resolve_device(args.device)
    model, tokenizer, _ = load_model(args.model_dir, device=device, dtype=torch.float32)
    corpus = build_corpus(dict(CORPUS), tokenizer)
    chosen = select_samples(len(corpus.lengths), settings["n_samples"], settings["seed"])
    chosen = chosen[baseline_positions(len(chosen), min(args.sequences, len(chosen)), settings["seed"])]
    sequences = [corpus.rows("original")[row] for row in chosen]
    result = {
        "model": Path(args.model_dir).name, "device": device, "dtype": "float32", "threads": args.threads,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1_5_15_min_at_start": os.getloadavg(), "tokens": [len(ids) for ids in sequences], "layer": args.layer,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "settings": settings,
    }
    torch.set_num_threads(args.threads)
    if "transitions" not in args.skip:
        with torch_threads(1):
            result["transitions"] = time_transitions(model, sequences[0], args.layer, args.loop_rows, args.repeats)
    if "set" not in args.skip:
        result["one_set"] = time_one_set(model, sequences[0], args.threads)
    if "design" not in args.skip:
        design = time_design_groups(model, sequences, chosen, settings, args.threads)
        result["design"] = design
        result["rule_estimate"] = estimate_rule(design["per_set_one_thread_cpu_s"], settings, design["workers_speedup"])
        print(f"default rule estimate: {result['rule_estimate']['estimate_s'] / 60:.1f} min on {args.threads} threads "
              f"({result['rule_estimate']['one_thread_s'] / 60:.1f} min on one)", flush=True)
    if args.llama8b:
        from rsdyn.jacobian.devices import llama8b_shaped

        sides = ("cpu", "cuda") if device == "cuda" else ("cpu",)
        result["llama8b"] = time_design(llama8b_shaped(device), n_tokens=args.llama8b_tokens, spectra_devices=sides)
        print(result["llama8b"], flush=True)
    result["load_average_1_5_15_min_at_end"] = os.getloadavg()
    print(f"-> {write_report(result, args.out)}")


if __name__ == "__main__":
    main()
