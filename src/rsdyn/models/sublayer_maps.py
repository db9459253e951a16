"""The sublayer maps of the last token: h_s -> h_{s+1} for every sublayer transition,
run by the model's own code so that torch.func can differentiate them.

Transition s = 2l is layer l's attention update (pre-attn -> pre-MLP residual), s = 2l + 1
its MLP update (pre-MLP -> layer l's output, the next layer's pre-attn or, for the last
layer, the final residual before the final norm). A map's input is written into the input
of decoder layer l (teleport's input substitution), every other layer is the identity
(teleport's layer skipping), the prompt's other positions are the key/value cache of the
prompt without its last token (teleport's prefix cache), and the output is read at the
data contract's hook sites: the pre-MLP site's input for the attention update (layer l's
MLP switched off: it does not reach that site), layer l's output with its attention
switched off for the MLP update (then the pre-MLP residual equals the layer's input).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch

from rsdyn.models.adapters import (
    adapter_for,
    base_model,
    decoder_layers,
    hook_sites,
    model_family,
)
from rsdyn.models.interventions import layer_input_hook, layers_skipped, prefix_cache


class SublayerMapError(ValueError):
    """A sublayer map cannot be built or run; the message says why."""


def _zeros_like_input(hidden_states, *args, **kwargs):  # noqa: ARG001 - MLP signature
    return torch.zeros_like(hidden_states)


def _no_attention(hidden_states, *args, **kwargs):  # noqa: ARG001 - attention signature
    return torch.zeros_like(hidden_states), None


@contextlib.contextmanager
def _forward_replaced(module: torch.nn.Module, name: str, forward) -> Iterator[None]:
    """Replace ``module.<name>.forward`` (a submodule of a decoder layer); restore in ``finally``."""
    child = getattr(module, name, None)
    if child is None:
        raise SublayerMapError(f"{type(module).__name__} has no .{name}; the Jacobian maps need a decoder layer with one.")
    previous = child.__dict__.get("forward")
    child.forward = forward
    try:
        yield
    finally:
        if previous is None:
            child.__dict__.pop("forward", None)
        else:
            child.forward = previous


@contextlib.contextmanager
def _captured(module: torch.nn.Module, store: dict, output: bool) -> Iterator[None]:
    """Store ``module``'s first input (``output=False``) or its output in ``store["value"]``."""

    def pre_hook(mod, args, kwargs):  # noqa: ARG001 - hook signature
        store["value"] = args[0] if args else kwargs["hidden_states"]

    def post_hook(mod, args, result):  # noqa: ARG001 - hook signature
        store["value"] = result[0] if isinstance(result, tuple) else result

    handle = module.register_forward_hook(post_hook) if output else module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run ``model`` with eager attention (differentiable by torch.func in both modes)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


class KeepFloat64(torch.overrides.TorchFunctionMode):
    """Inside it a float64 tensor is never cast down to float32: ``.float()``,
    ``.to(torch.float32)`` and ``softmax(..., dtype=torch.float32)`` of a float64 tensor keep
    float64. Transformers' norms, rotary embeddings and eager softmax upcast half-precision
    inputs to float32 that way, which in a float64 model would round to float32 mid-layer."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.dtype == torch.float64:
            if func is torch.Tensor.float:
                return first
            if func is torch.Tensor.to:
                if kwargs.get("dtype") == torch.float32:
                    kwargs.pop("dtype")
                args = tuple(torch.float64 if item is torch.float32 else item for item in args)
            if func in _SOFTMAX and kwargs.get("dtype") == torch.float32:
                kwargs["dtype"] = torch.float64
        return func(*args, **kwargs)


_SOFTMAX = (torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax)


def precision_mode(model) -> contextlib.AbstractContextManager:
    """:class:`KeepFloat64` for a float64 model, else nothing."""
    return KeepFloat64() if next(model.parameters()).dtype == torch.float64 else contextlib.nullcontext()


class SublayerMaps:
    """The sublayer maps h_s -> h_{s+1} (s = 0 .. 2L-1) of the last token of one prompt.

    ``maps(s, x)`` runs transition s on the state ``x`` (D,) in the model's dtype and
    returns h_{s+1} (D,); :meth:`initial_state` is h_0, the last token's input of layer 0.
    """

    def __init__(self, model, prompt_ids, family: str = "auto"):
        adapter_for(model_family(model, family))
        self.decoder = base_model(model)
        self.layers = decoder_layers(model)
        self.sites = hook_sites(model, family)
        parameter = next(model.parameters())
        ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long, device=parameter.device).reshape(-1)
        if ids.numel() == 0:
            raise SublayerMapError("A prompt with no tokens has no last token to differentiate.")
        self.last_id = ids[-1:].reshape(1, 1)
        self.position = torch.full((1, 1), ids.numel() - 1, dtype=torch.long, device=parameter.device)
        self.cache = prefix_cache(model, ids.cpu().numpy(), family)
        self.n_transitions = 2 * len(self.layers)

    def _run(self, layer: int, cache) -> None:
        self.decoder(input_ids=self.last_id, position_ids=self.position, cache=cache, use_cache=cache is not None)

    def initial_state(self) -> torch.Tensor:
        """h_0: the last token's residual stream entering layer 0 (its embedding), (D,)."""
        captured: dict[str, torch.Tensor] = {}
        with torch.no_grad(), layers_skipped(self.layers), _captured(self.layers[0], captured, output=False):
            self._run(0, None)
        return captured["value"].reshape(-1).detach().clone()

    def fresh_cache(self):
        """A copy of the prefix cache for one attention update (the update appends the last
        token's key and value to it); None for a one-token prompt."""
        return copy.deepcopy(self.cache) if self.cache is not None else None

    def __call__(self, transition: int, state: torch.Tensor) -> torch.Tensor:
        if not 0 <= transition < self.n_transitions:
            raise SublayerMapError(f"transition {transition} does not exist; a model of {self.n_transitions // 2} layers has 0..{self.n_transitions - 1}.")
        layer, is_mlp = divmod(transition, 2)
        block = self.layers[layer]
        captured: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(layers_skipped([other for index, other in enumerate(self.layers) if index != layer]))
            stack.enter_context(layer_input_hook(block, lambda hidden: state.reshape(1, 1, -1).to(hidden.dtype)))
            if is_mlp:
                stack.enter_context(_forward_replaced(block, "self_attn", _no_attention))
                stack.enter_context(_captured(block, captured, output=True))
                cache = None
            else:
                stack.enter_context(_forward_replaced(block, "mlp", _zeros_like_input))
                stack.enter_context(_captured(self.sites[layer][1], captured, output=False))
                cache = self.fresh_cache()
            self._run(layer, cache)
        return captured["value"].reshape(-1)
