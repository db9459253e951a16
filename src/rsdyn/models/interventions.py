"""Running a model with parts of it replaced: the one place that intervenes in a forward.

Used by teleportation (write a state into a layer's input and watch where the rest of the
model takes it) and by the sublayer Jacobians (run one sublayer map at a time):

- :func:`layers_skipped` replaces decoder layers by the identity,
- :func:`layer_input_hook` rewrites the residual stream entering a decoder layer,
- :func:`control_states` records the last token's residual stream of an unmodified prompt,
- :func:`prefix_cache` runs the prompt without its last token once, for its key/value
  cache: by causal attention the earlier positions do not depend on the last token, so
  every later forward of the last token alone reuses it,
- :func:`relative_difference` and ``VERIFY_TOLERANCE`` compare a batched, cache-reusing
  result with a full forward of the same input.

Every hook and replaced forward is removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rsdyn.models.adapters import adapter_for, base_model, decoder_layers, model_family
from rsdyn.models.recorder import ResidualRecorder


class PromptError(ValueError):
    """A prompt cannot be run; the message says why."""


def identity_layer(hidden_states, *args, **kwargs):  # noqa: ARG001 - decoder layer signature
    """A decoder layer that returns its input (transformers 5.x layers return a tensor)."""
    return hidden_states


@contextlib.contextmanager
def layers_skipped(layers: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Replace the forward of ``layers`` by the identity; restore it in ``finally``."""
    saved: list[tuple[torch.nn.Module, Any]] = []
    try:
        for layer in layers:
            saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = identity_layer
        yield
    finally:
        for layer, previous in saved:
            if previous is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = previous


@contextlib.contextmanager
def layer_input_hook(layer: torch.nn.Module, function) -> Iterator[None]:
    """Forward pre-hook on a decoder layer: ``function(hidden_states)`` returns the
    replacement (or None to keep it); removed in ``finally``."""

    def hook(module, args, kwargs):  # noqa: ARG001 - hook signature
        hidden = args[0] if args else kwargs["hidden_states"]
        new = function(hidden)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def prepare(model, prompt_ids, family: str = "auto"):
    """Common checks; returns ``(decoder, layers, device, dtype, ids (1, T))``."""
    adapter_for(model_family(model, family))  # unknown families fail here
    layers = decoder_layers(model)
    ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long).reshape(1, -1)
    if ids.shape[1] == 0:
        raise PromptError("The control prompt has no tokens.")
    parameter = next(model.parameters())
    return base_model(model), layers, parameter.device, parameter.dtype, ids.to(parameter.device)


@torch.inference_mode()
def control_states(model, prompt_ids, family: str = "auto") -> torch.Tensor:
    """Last-token residual stream of the unmodified prompt at all 2L sublayers: float32 (2L, D)."""
    decoder, _, device, _, ids = prepare(model, prompt_ids, family)
    with ResidualRecorder(model, family) as recorder:
        recorder.reset()
        recorder.positions = torch.full((1,), ids.shape[1] - 1, dtype=torch.long, device=device)
        decoder(input_ids=ids, use_cache=False)
        return recorder.states[0].clone()


@torch.inference_mode()
def prefix_cache(model, prompt_ids, family: str = "auto"):
    """Key/value cache of every layer for the prompt without its last token (None when the
    prompt is a single token): what the last token attends to, the same for every grid point."""
    decoder, _, _, _, ids = prepare(model, prompt_ids, family)
    if ids.shape[1] < 2:
        return None
    return decoder(input_ids=ids[:, :-1], use_cache=True).cache


#: largest allowed |batched - full forward| relative to the largest activation, per compute dtype
VERIFY_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def relative_difference(model, states: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """max |states - reference| over the largest |reference|, and the ``VERIFY_TOLERANCE`` of
    the model's compute dtype it must not exceed."""
    scale = float(reference.abs().max().clamp_min(1e-30))
    difference = float((states.to(reference.device, reference.dtype) - reference).abs().max()) / scale
    return difference, VERIFY_TOLERANCE.get(next(model.parameters()).dtype, 1e-2)
