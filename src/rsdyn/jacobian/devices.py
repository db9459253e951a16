"""Where the Jacobian stage's work runs, and what it costs at the paper's scale.

- :func:`resolve_spectra_device`: ``jacobian.spectra_device`` -> ``cpu`` or ``cuda``; ``auto``
  keeps the spectra on the CPU when the Jacobians are there, and on a GPU times one
  transition's spectra (:func:`time_spectra`) on each side and takes the faster.
- :func:`llama8b_shaped` and :func:`time_design`: the timing of the rule's design (by default
  16 sequences x 64 transitions) on a randomly initialised model of Llama-3.1-8B's shape
  (D = 4096, 32 layers, 32 heads, 8 key/value heads, MLP 14336), for the GPU benchmark
  (issue 19.4): a few transitions per sequence are timed and the rest extrapolated.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rsdyn.jacobian.spectra import ProductChain, matrix_spectra


def synchronise(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_spectra(dim: int, dtype: torch.dtype, device: str, repeats: int = 2, seed: int = 0) -> float:
    """Seconds of one transition's spectra (:func:`rsdyn.jacobian.spectra.matrix_spectra`, a
    product step and its SVD) of a random D x D Jacobian on ``device``: best of ``repeats``
    after a warm-up."""
    rng = torch.Generator(device="cpu").manual_seed(seed)
    matrix = (torch.eye(dim, dtype=dtype) + torch.randn(dim, dim, generator=rng, dtype=dtype) / dim**0.5).to(device)
    best = float("inf")
    for attempt in range(repeats + 1):
        synchronise(device)
        start = time.perf_counter()
        chain = ProductChain()
        matrix_spectra(matrix)
        chain.step(matrix)
        chain.spectra()
        synchronise(device)
        if attempt:  # the first is the warm-up
            best = min(best, time.perf_counter() - start)
    return best


def resolve_spectra_device(setting: str, device: str, dim: int, dtype: torch.dtype) -> str:
    """``jacobian.spectra_device`` for Jacobians on ``device``: ``cpu``/``cuda`` as set
    (``cuda`` needs a GPU); ``auto`` = ``cpu`` for CPU Jacobians, else the faster side by
    :func:`time_spectra`."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("jacobian.spectra_device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'.")
    if setting != "auto":
        return setting
    if not str(device).startswith("cuda"):
        return "cpu"
    return min(("cuda", "cpu"), key=lambda side: time_spectra(dim, dtype, side))


def llama8b_shaped(device: str = "cuda", dtype: torch.dtype = torch.float32, seed: int = 0, **shape: Any):
    """A randomly initialised ``LlamaForCausalLM`` of Llama-3.1-8B's shape, built on
    ``device`` (keyword arguments override the shape: ``num_hidden_layers``, ``hidden_size``,
    ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``vocab_size``;
    the tests build a tiny one on the CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{
        "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0,
        "bos_token_id": 1, "eos_token_id": 2, **shape,
    })
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def time_design(
    model,
    n_sequences: int = 16,
    n_tokens: int = 77,
    timed_transitions: int = 4,
    spectra_devices: tuple[str, ...] = ("cpu",),
    spectra_dtype: torch.dtype = torch.float32,
    timed_sequences: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the jacobian rule's work on ``model``: for ``timed_sequences`` random prompts of
    ``n_tokens`` tokens, the Jacobians of the first ``timed_transitions`` transitions (half
    attention, half MLP) and their spectra on each of ``spectra_devices``; extrapolated to
    ``n_sequences`` x every transition (2L). Returns seconds per attention and MLP Jacobian,
    per transition's spectra on each side, the faster side, and the estimate of the whole
    (Jacobians + spectra on the faster side) for the trained weights alone."""
    from rsdyn.jacobian.jacobian import transition_jacobians

    device = str(next(model.parameters()).device)
    vocab = int(model.config.vocab_size)
    rng = np.random.default_rng(seed)
    jacobian_seconds: dict[str, list[float]] = {"attention": [], "mlp": []}
    spectra_seconds: dict[str, list[float]] = {side: [] for side in spectra_devices}
    n_transitions = 2 * int(model.config.num_hidden_layers)
    for _ in range(timed_sequences):
        ids = np.concatenate([[int(model.config.bos_token_id or 1)], rng.integers(3, vocab, size=n_tokens - 1)])
        steps = transition_jacobians(model, ids)
        next(steps)  # the embedding
        for transition in range(min(timed_transitions, n_transitions)):
            synchronise(device)
            start = time.perf_counter()
            jacobian, _ = next(steps)
            synchronise(device)
            jacobian_seconds["mlp" if transition % 2 else "attention"].append(time.perf_counter() - start)
            for side in spectra_devices:
                matrix = jacobian.to(side, spectra_dtype)
                synchronise(side)
                start = time.perf_counter()
                matrix_spectra(matrix)
                chain = ProductChain()
                chain.step(matrix)
                chain.spectra()
                synchronise(side)
                spectra_seconds[side].append(time.perf_counter() - start)
        steps.close()
    per_jacobian = {kind: float(np.median(values)) for kind, values in jacobian_seconds.items() if values}
    per_spectra = {side: float(np.median(values)) for side, values in spectra_seconds.items() if values}
    fastest = min(per_spectra, key=per_spectra.get)
    per_transition = float(np.mean(list(per_jacobian.values()))) + per_spectra[fastest]
    return {
        "device": device, "d_model": int(model.config.hidden_size), "n_layers": n_transitions // 2, "n_tokens": n_tokens,
        "timed_sequences": timed_sequences, "timed_transitions": timed_transitions,
        "jacobian_s": per_jacobian, "spectra_s": per_spectra, "spectra_device": fastest,
        "design": {"sequences": n_sequences, "transitions": n_transitions},
        "estimate_s": per_transition * n_sequences * n_transitions,
        "note": "medians over the timed transitions (the first transitions of each timed sequence); the estimate "
        "covers the trained weights only, without baselines",
    }
