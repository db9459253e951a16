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
``vmap``) differentiates it. Attention runs under :mod:`rsdyn.jacobian.attention`'s
last-token implementation (the prefix's keys and values as constants: 4x faster than eager
attention, the same numbers) or, with ``jacobian.attention: eager``, the model's eager
attention (scaled_dot_product_attention has no forward-mode rule and a slow vmap
fallback). The chain h_{s+1} = map_s(h_s) starts at the embedding and is checked against a
plain recorded forward under eager attention, a guard against a model whose layers break
the conventions the maps rely on.

The spectra of every J (and of the update J - I) and of the cumulative product are in
:mod:`rsdyn.jacobian.spectra`; :mod:`rsdyn.jacobian.sample` computes them per sequence,
for the trained weights, freshly initialised weights and surrogate updates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from rsdyn.jacobian.attention import LastTokenMaps, attention_implementation
from rsdyn.jacobian.mlp import gated_mlp_update, gated_parts
from rsdyn.jacobian.settings import MODES, PRODUCT_EVERY, JacobianError, product_depths  # noqa: F401 - product_depths re-exported
from rsdyn.models.interventions import control_states, relative_difference
from rsdyn.models.sublayer_maps import SublayerMaps, eager_attention, precision_mode

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: per-row scalar quantities: of every transition (S,), and of the cumulative product at the
#: product depths (P,, :func:`product_depths`); each also stored as _mean and _std over rows
MATRIX_SCALARS = tuple(
    prefix + name
    for prefix in ("", "update_")
    for name in ("spectral_radius", "rotation_index", "henrici", "antisymmetric_share", "frobenius_norm", "effective_rank_pr")
)
CUMULATIVE_SCALARS = ("cumulative_effective_rank_pr", "cumulative_effective_rank_entropy")
SCALARS = MATRIX_SCALARS + CUMULATIVE_SCALARS
#: per-row vectors: eigenvalues (S, D), cumulative_log_singular_values (P, D), lyapunov (P, N_LYAPUNOV), P product depths
VECTORS = ("eigenvalues", "cumulative_log_singular_values", "lyapunov")
#: finite-depth Lyapunov exponents stored per transition (the largest)
N_LYAPUNOV = 8

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
    "effective_rank_pr": "participation ratio of the singular values, (sum sigma^2)^2 / sum sigma^4 = ||J||_F^4 / ||J^T J||_F^2",
    "cumulative_log_singular_values": f"log singular values of the product J_s ... J_0 after the last layer and every "
    f"{PRODUCT_EVERY} layers before it (s = 2l + 1, attrs product_depths), largest first (resolved down to about eps x "
    "the largest of the spectra dtype)",
    "cumulative_effective_rank_pr": "participation ratio of the singular values of J_s ... J_0",
    "cumulative_effective_rank_entropy": "exp spectral entropy of the singular values of J_s ... J_0, p = sigma / sum sigma",
    "lyapunov": f"the {N_LYAPUNOV} largest finite-depth Lyapunov exponents (1/(s+1)) log sigma_i(J_s ... J_0), "
    "nats per sublayer transition",
    "sequence": "position of the row's sequence in sample_indices",
    "draw": "initial: position of the row's seed in init_seeds; surrogates: the draw; trained: 0",
    "initial": "freshly initialised weights of the same config (transformers' initializer), one model per init seed",
    "svd_matched": "beyond the paper: J = I + Q_1 diag(sigma(U_s)) Q_2^T, the trained update's singular values with "
    "Haar-random orthogonal singular vectors, per transition and sequence",
    "norm_matched": "beyond the paper: J = I + G ||U_s||_F / ||G||_F, G standard Gaussian, per transition and sequence",
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


def baseline_positions(n_samples: int, n_baseline: int, seed: int) -> np.ndarray:
    """The positions (into the ``n_samples`` chosen sequences) whose Jacobians the baselines
    (initial weights, surrogates) also get: a seeded choice of ``n_baseline``, sorted, int64."""
    if not 1 <= n_baseline <= n_samples:
        raise JacobianError(f"jacobian.baseline_samples = {n_baseline}; it must lie in 1..jacobian.n_samples = {n_samples}.")
    return np.sort(np.random.default_rng([seed, n_samples, 1]).choice(n_samples, size=n_baseline, replace=False)).astype(np.int64)


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


def transition_jacobians(
    model, prompt_ids, family: str = "auto", mode: str = "rev", chunk_size: int | None = None, attention: str = "last_token",
    mlp: str = "gated",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every transition of one prompt's last token in order: yields ``(J_s (D, D), h_{s+1} (D,))``
    in the model's dtype and device, s = 0 .. 2L - 1, after ``(None, h_0)`` (the embedding).

    ``chunk_size``: rows per vmap batch; None = automatic (all rows, but under eager
    attention the attention updates are chunked by :func:`attention_chunk_size`).
    ``attention``: ``last_token`` or ``eager`` (:mod:`rsdyn.jacobian.attention`): the model
    runs under it until the generator is exhausted or closed (only the float64 precision
    mode is left between transitions, so that the caller may cast the Jacobians down).
    ``mlp``: ``gated`` assembles a gated MLP update's Jacobian from its modules
    (:mod:`rsdyn.jacobian.mlp`) while its value agrees with the model's own map (else, and
    with ``autodiff``, ``torch.func`` as for the attention updates)."""
    attention_chunk = chunk_size
    if attention == "eager" and chunk_size is None:
        attention_chunk = attention_chunk_size(model, len(np.asarray(prompt_ids).reshape(-1)))
    with attention_implementation(model, attention):
        with precision_mode(model):
            maps = (LastTokenMaps if attention == "last_token" else SublayerMaps)(model, prompt_ids, family)
            state = maps.initial_state()
        yield None, state
        structured = mlp == "gated"
        for transition in range(maps.n_transitions):
            with precision_mode(model):
                parts = gated_parts(maps.layers[transition // 2], maps.sites[transition // 2][1]) if structured and transition % 2 else None
                jacobian = None
                if parts is not None:
                    jacobian, value = gated_mlp_update(parts, state)
                    with torch.no_grad():
                        reference = maps(transition, state)
                    difference, tolerance = relative_difference(model, value, reference)
                    if difference > tolerance:
                        log.warning("the gated MLP Jacobian's value differs from the model's map by %.1e (allowed %g) at "
                                    "transition %d; torch.func for this sequence's MLP updates", difference, tolerance, transition)
                        jacobian, structured = None, False
                if jacobian is None:
                    chunk = chunk_size if transition % 2 else attention_chunk
                    jacobian, reference = jacobian_of(lambda x, s=transition: maps(s, x), state, mode, chunk)
                state = reference
            yield jacobian, state


def sublayer_jacobians(
    model, prompt_ids, family: str = "auto", mode: str = "rev", chunk_size: int | None = None, attention: str = "last_token",
    mlp: str = "gated",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every transition's Jacobian of one prompt's last token: ``(J (2L, D, D), states
    (2L + 1, D))`` in the model's dtype and device; ``states[s]`` = h_s along the chain of
    sublayer maps (``states[2L]`` the final residual, before the final norm). Arguments as
    :func:`transition_jacobians`."""
    steps = list(transition_jacobians(model, prompt_ids, family, mode, chunk_size, attention, mlp))
    return torch.stack([jacobian for jacobian, _ in steps[1:]]), torch.stack([state for _, state in steps])


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


def initial_model(model, seed: int):
    """A freshly initialised model of ``model``'s config (same dtype and device), seeded;
    the global random state is left as it was."""
    from transformers import AutoModelForCausalLM

    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=parameter.dtype)
    return fresh.to(parameter.device).eval()
