"""Jacobians of the residual-stream updates through depth (the authors' follow-up,
"Dynamics of the Transformer Residual Stream: Coupling Spectral Geometry to Network
Topology", 2026: non-normal, rotation-dominated early layers, near-symmetric late layers,
a cumulative low-rank bottleneck, learned rather than architectural).

Transition s -> s + 1 (s = 0 .. 2L - 1) is a sublayer update of the last token's residual
stream: s = 2l the attention update of layer l (pre-attn -> pre-MLP, "within" a layer),
s = 2l + 1 its MLP update (pre-MLP -> the next layer's pre-attn, "cross"; for the last
layer, the final residual: the last decoder layer's output before the final norm).
J_s = dh_{s+1}/dh_s is the exact D x D Jacobian of the last token's state with respect to
its own state at s, every other position held at its value in the unperturbed forward.

Each sublayer map runs the model's own code on teleport's prefix cache, layer skipping and
input substitution (:mod:`rsdyn.models.sublayer_maps`); ``torch.func.jacrev`` (or ``jvp`` under
``vmap``) differentiates it, with eager attention (scaled_dot_product_attention has no
forward-mode rule and a slow vmap fallback). The chain h_{s+1} = map_s(h_s) starts at the
embedding and is checked against a plain recorded forward, a guard against a model whose
layers break the conventions the maps rely on.

Per transition and sample the spectral quantities of :mod:`rsdyn.jacobian.spectra` are computed for
J and for the update itself, J - I, and the cumulative product J_s ... J_0 gives the
bottleneck (its effective rank) and finite-depth Lyapunov exponents. The same is done
for freshly initialised weights of the same config (``baselines: [initial]``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rsdyn.core.jobs import progress
from rsdyn.core.threads import torch_threads
from rsdyn.jacobian.settings import MODES, JacobianError
from rsdyn.jacobian.spectra import cumulative_spectra, matrix_spectra
from rsdyn.models.interventions import control_states, relative_difference
from rsdyn.models.sublayer_maps import SublayerMaps, eager_attention, precision_mode

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: per-sample scalar quantities of every transition (also stored as _mean and _std over samples)
SCALARS = tuple(
    prefix + name
    for prefix in ("", "update_")
    for name in (
        "spectral_radius", "rotation_index", "henrici", "antisymmetric_share", "frobenius_norm",
        "effective_rank_pr", "effective_rank_entropy",
    )
) + ("cumulative_effective_rank_pr", "cumulative_effective_rank_entropy")
#: per-sample vectors (D,) of every transition
VECTORS = ("eigenvalues", "singular_values", "update_singular_values", "cumulative_log_singular_values", "lyapunov")

DEFINITIONS = {
    "J": "J_s = dh_{s+1}/dh_s of the last token's residual stream w.r.t. its own state at sublayer s, "
    "other positions fixed at the unperturbed forward; transition s = 2l attention (within), 2l+1 MLP (cross)",
    "update": "U_s = J_s - I, the Jacobian of the sublayer's update alone; quantities prefixed update_",
    "eigenvalues": "eigenvalues of J_s, complex, sorted by modulus (largest first); those of U_s are these minus 1",
    "spectral_radius": "max |lambda|",
    "rotation_index": "sum |Im lambda| / sum |lambda|",
    "henrici": "normalised Henrici departure from normality sqrt(||J||_F^2 - sum |lambda|^2) / ||J||_F",
    "antisymmetric_share": "||(J - J^T)/2||_F / ||J||_F",
    "frobenius_norm": "||J||_F",
    "singular_values": "singular values, largest first",
    "effective_rank_pr": "participation ratio of the singular values, (sum sigma^2)^2 / sum sigma^4",
    "effective_rank_entropy": "exp of the entropy of p = sigma / sum sigma",
    "cumulative_log_singular_values": "log singular values of the product J_s ... J_0 (QR re-orthonormalisation)",
    "cumulative_effective_rank_pr": "participation ratio of the singular values of J_s ... J_0",
    "cumulative_effective_rank_entropy": "exp spectral entropy of the singular values of J_s ... J_0",
    "lyapunov": "finite-depth Lyapunov exponents (1/(s+1)) sum_{k<=s} log|R_k,ii| of the QR iteration "
    "J_k Q_{k-1} = Q_k R_k, largest first (nats per sublayer transition)",
}


# --------------------------------------------------------------------------- transitions


def transition_names(n_layers: int) -> list[str]:
    """``L{l}.attn`` (2l -> 2l+1) and ``L{l}.mlp`` (2l+1 -> 2l+2), interleaved: 2L names."""
    return [f"L{l}.{kind}" for l in range(n_layers) for kind in ("attn", "mlp")]


def transition_types(n_layers: int) -> list[str]:
    """``within`` for the attention update (2l -> 2l+1), ``cross`` for the MLP update."""
    return ["within", "cross"] * n_layers


def select_samples(n_rows: int, n_samples: int, seed: int) -> np.ndarray:
    """Seeded choice of ``n_samples`` distinct corpus rows out of ``n_rows``, sorted: int64."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise JacobianError(f"jacobian.n_samples = {n_samples!r}; it must be an integer >= 1.")
    if n_samples > n_rows:
        raise JacobianError(
            f"jacobian.n_samples = {n_samples} exceeds the {n_rows} sequences of the corpus; use at most {n_rows}."
        )
    return np.sort(np.random.default_rng([seed, n_rows]).choice(n_rows, size=n_samples, replace=False)).astype(np.int64)


def jacobian_of(function: Callable[[torch.Tensor], torch.Tensor], state: torch.Tensor, mode: str = "rev", chunk_size: int | None = None):
    """``(J, function(state))``: the exact Jacobian (D_out, D_in) of ``function`` at ``state``
    by ``torch.func.jacrev`` (``mode="rev"``: one forward, D_out vmapped backward passes)
    or ``jacfwd`` (``"fwd"``: D_in vmapped tangents); ``chunk_size`` bounds the vmap batch."""
    if mode not in MODES:
        raise JacobianError(f"jacobian.mode = {mode!r}; allowed values are {', '.join(MODES)}.")
    if state.is_inference():  # e.g. recorded under torch.inference_mode: autograd cannot save it
        state = state.clone()
    if mode == "rev":

        def with_value(x):
            value = function(x)
            return value, value

        jacobian, value = torch.func.jacrev(with_value, has_aux=True, chunk_size=chunk_size)(state)
        return jacobian.detach(), value.detach()

    def push_forward(tangent):
        return torch.func.jvp(function, (state,), (tangent,))[1]

    basis = torch.eye(state.numel(), dtype=state.dtype, device=state.device)
    columns = torch.func.vmap(push_forward, chunk_size=chunk_size)(basis)  # row i = J e_i
    with torch.no_grad():
        value = function(state)
    return columns.mT.detach(), value.detach()


#: elements of one vmapped row's key/value gradient that an automatic chunk may hold, per device type
#: (on CPU 2^21 float32 = 8 MB keeps the attention backward in cache: 2.5x faster than no chunking)
CHUNK_ELEMENTS = {"cpu": 2**21, "cuda": 2**28}


def attention_chunk_size(model, n_tokens: int) -> int:
    """Rows per vmap chunk for an attention update over ``n_tokens`` positions: the
    backward of the attention scores materialises a (rows, heads, tokens, head_dim)
    gradient of the keys and of the values; the chunk keeps it near ``CHUNK_ELEMENTS``."""
    config = model.config.get_text_config()
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    budget = CHUNK_ELEMENTS.get(next(model.parameters()).device.type, CHUNK_ELEMENTS["cuda"])
    return int(min(config.hidden_size, max(16, budget // (heads * max(n_tokens, 1) * head_dim))))


def sublayer_jacobians(
    model, prompt_ids, family: str = "auto", mode: str = "rev", chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every transition's Jacobian of one prompt's last token: ``(J (2L, D, D), states
    (2L + 1, D))`` in the model's dtype and device; ``states[s]`` = h_s along the chain of
    sublayer maps (``states[2L]`` the final residual, before the final norm).

    ``chunk_size``: rows per vmap batch; None = automatic (all rows for the MLP updates,
    :func:`attention_chunk_size` for the attention updates)."""
    attention_chunk = chunk_size or attention_chunk_size(model, len(np.asarray(prompt_ids).reshape(-1)))
    with eager_attention(model), precision_mode(model):
        maps = SublayerMaps(model, prompt_ids, family)
        state = maps.initial_state()
        jacobians, states = [], [state]
        for transition in range(maps.n_transitions):
            chunk = chunk_size if transition % 2 else attention_chunk
            jacobian, state = jacobian_of(lambda x, s=transition: maps(s, x), state, mode, chunk)
            jacobians.append(jacobian)
            states.append(state)
    return torch.stack(jacobians), torch.stack(states)


def verify_chain(model, prompt_ids, states: torch.Tensor, family: str = "auto") -> float:
    """Raise when the chain of sublayer maps ``states`` (2L + 1, D) differs from a plain forward's
    recorded states (2L sublayers) by more than teleport's ``VERIFY_TOLERANCE`` of the largest
    activation; returns the relative difference."""
    with eager_attention(model), precision_mode(model):
        reference = control_states(model, prompt_ids, family)
    difference, tolerance = relative_difference(model, states[: reference.shape[0]].to(reference.device, torch.float32), reference)
    if not difference <= tolerance:
        raise RuntimeError(
            f"The chain of sublayer maps differs from a full forward by {difference:.2e} of the largest activation "
            f"(allowed {tolerance:g}); this model or transformers version breaks the conventions the Jacobian maps "
            "rely on (decoder layers returning a tensor, .self_attn and .mlp submodules, a DynamicCache)."
        )
    return difference


# --------------------------------------------------------------------------- spectra per sample


def sample_spectra(jacobians: torch.Tensor, workers: int = 1) -> dict[str, np.ndarray]:
    """:func:`rsdyn.jacobian.spectra.matrix_spectra` of every transition and
    :func:`rsdyn.jacobian.spectra.cumulative_spectra` of the chain, for one sample's ``jacobians``
    (S, D, D): NumPy arrays with leading axis S.

    On CPU the matrices go one at a time to ``workers`` threads, each running LAPACK on a
    single thread (on a loaded machine a multi-threaded eigensolver is many times slower);
    the numbers do not depend on ``workers``. On a GPU the stack goes in one batch.
    """
    if jacobians.device.type != "cpu" or workers <= 1:
        with contextlib.nullcontext() if jacobians.device.type != "cpu" else torch_threads(1):
            per_matrix = matrix_spectra(jacobians)
            cumulative = cumulative_spectra(jacobians)
    else:
        with torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            chain = pool.submit(cumulative_spectra, jacobians)
            results = list(pool.map(matrix_spectra, jacobians))
            cumulative = chain.result()
        per_matrix = {key: torch.stack([result[key] for result in results]) for key in results[0]}
    return {key: value.cpu().numpy() for key, value in {**per_matrix, **cumulative}.items()}


def _vector_dtype(array: np.ndarray, double: bool) -> np.ndarray:
    if np.iscomplexobj(array):
        return array.astype(np.complex128 if double else np.complex64)
    return array.astype(np.float64 if double else np.float32)


def stack_samples(per_sample: Sequence[Mapping[str, np.ndarray]], double: bool = False) -> dict[str, np.ndarray]:
    """One weights group of ``jacobian.zarr`` from per-sample spectra: every quantity
    (n_samples, S[, D]); each scalar also as ``{name}_mean`` and ``{name}_std`` (S,) over
    samples (std with ddof 1; 0 for one sample). Vectors are float32/complex64 unless
    ``double``."""
    group: dict[str, np.ndarray] = {}
    for name in SCALARS:
        values = np.stack([sample[name] for sample in per_sample]).astype(np.float64)
        group[name] = values
        group[f"{name}_mean"] = values.mean(axis=0)
        group[f"{name}_std"] = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
    for name in VECTORS:
        group[name] = _vector_dtype(np.stack([sample[name] for sample in per_sample]), double)
    return group


def weights_spectra(
    model,
    sequences: Sequence[np.ndarray],
    family: str = "auto",
    mode: str = "rev",
    chunk_size: int | None = None,
    workers: int = 1,
    desc: str = "jacobians",
) -> dict[str, np.ndarray]:
    """The ``jacobian.zarr`` group of one set of weights over ``sequences`` (token ids, BOS first)."""
    per_sample = []
    for ids in progress(sequences, desc=desc, unit="seq"):
        start = time.perf_counter()
        jacobians, states = sublayer_jacobians(model, ids, family, mode, chunk_size)
        difference = verify_chain(model, ids, states, family)
        middle = time.perf_counter()
        per_sample.append(sample_spectra(jacobians, workers))
        log.info(
            "%s: %d tokens, Jacobians %.1f s, spectra %.1f s, chain vs forward %.1e",
            desc, len(ids), middle - start, time.perf_counter() - middle, difference,
        )
    return stack_samples(per_sample, double=next(model.parameters()).dtype == torch.float64)


def initial_model(model, seed: int):
    """A freshly initialised model of ``model``'s config (same dtype and device), seeded;
    the global random state is left as it was."""
    from transformers import AutoModelForCausalLM

    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=parameter.dtype)
    return fresh.to(parameter.device).eval()


# --------------------------------------------------------------------------- stage


# --------------------------------------------------------------------------- summary


