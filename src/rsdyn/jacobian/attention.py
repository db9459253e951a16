"""Softmax attention of the last token with its prefix held constant: the attention
implementation the attention-update Jacobians run under (``jacobian.attention:
last_token``).

A sublayer map of an attention update runs one query, the last token's, against the
keys and values of the prefix cache plus the last token's own key and value (see
:mod:`rsdyn.models.sublayer_maps`). Only the query and that last key and value depend
on the state being differentiated. The eager implementation concatenates the prefix and
the own key/value and multiplies the query with the whole (T, head_dim) stack; a vmapped
backward pass then forms a gradient for every one of the T keys and values, in every
query head (after repeating the key/value heads), and throws away all but the last: on
the default model about three quarters of an attention Jacobian's time.

:func:`last_token_attention` computes the same numbers (the same scaling, optional
logit soft-capping, additive mask, float32 softmax, grouped key/value heads) from the
prefix keys/values taken as constants (detached) and the own key/value separately, so
that the backward pass reaches only the query and the own key/value. It is registered
with transformers' attention interface under :data:`NAME` (its masks are the eager
ones), and :func:`attention_implementation` switches a model to it (or to ``eager``)
inside a block. A query longer than one token (a full forward) takes the plain eager
formula. The chain check of every sequence (``verify_chain``) compares the maps run under
it with a full forward under the model's eager attention.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator

import torch

from rsdyn.models.sublayer_maps import SublayerMaps, eager_attention

NAME = "rsdyn_last_token"
IMPLEMENTATIONS = ("last_token", "eager")


def _scores_to_weights(scores: torch.Tensor, attention_mask, softcap, dtype) -> torch.Tensor:
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : scores.shape[-1]]
    return torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def _own_states(module, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last token's own key and value: as recorded by :class:`LastTokenMaps`' cache on
    their way into it (so that the backward pass never reaches the concatenated stack),
    else the last entries of ``key`` and ``value``."""
    recorded = getattr(_RECORDED, "states", {}).pop(getattr(module, "layer_idx", None), None)
    if recorded is not None and recorded[0].shape[-2] == 1 and recorded[0].shape[:2] == key.shape[:2]:
        return recorded
    return key[:, :, -1:], value[:, :, -1:]


def last_token_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, softcap=None, **kwargs):
    """Eager attention (``query`` (B, H, Q, d), ``key``/``value`` (B, H_kv, T, d)) returning
    ``(output (B, Q, H, d), weights (B, H, Q, T))``; for Q = 1 the keys and values before
    the last are constants of the computation (detached), multiplied per batch entry and
    key/value head as plain 2-D matrices (a vmapped backward pass then folds its rows
    into one matrix product instead of copying the keys for every row)."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("last_token_attention does not implement attention sinks (s_aux); use jacobian.attention: eager.")
    if scaling is None:
        scaling = module.head_dim**-0.5
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if length != 1:  # a full forward: the plain eager formula
        keys = key.repeat_interleave(groups, dim=1)
        values = value.repeat_interleave(groups, dim=1)
        weights = _scores_to_weights(query @ keys.transpose(-1, -2) * scaling, attention_mask, softcap, query.dtype)
        return (weights @ values).transpose(1, 2).contiguous(), weights
    grouped = query.reshape(batch, kv_heads, groups, dim)  # query head h reads key/value head h // groups
    own_key, own_value = _own_states(module, key, value)
    prefix_keys, prefix_values = key[:, :, :-1].detach(), value[:, :, :-1].detach()

    def per_head(function):
        return torch.stack([torch.stack([function(b, h) for h in range(kv_heads)]) for b in range(batch)])

    prefix_scores = per_head(lambda b, h: grouped[b, h] @ prefix_keys[b, h].T)  # (B, H_kv, groups, T - 1)
    scores = torch.cat([prefix_scores, (grouped * own_key).sum(dim=-1, keepdim=True)], dim=-1)
    weights = _scores_to_weights(scores * scaling, attention_mask, softcap, query.dtype)
    output = per_head(lambda b, h: weights[b, h, :, :-1] @ prefix_values[b, h]) + weights[..., -1:] * own_value
    return output.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), weights.reshape(batch, heads, 1, -1)


_RECORDED = threading.local()


def _recording(cache):
    """``cache`` whose ``update`` also records the incoming key and value states of its
    layer (in this thread) for :func:`last_token_attention`."""
    def update(key_states, value_states, layer_idx, *args, **kwargs):
        if not hasattr(_RECORDED, "states"):
            _RECORDED.states = {}
        _RECORDED.states[layer_idx] = (key_states, value_states)
        return type(cache).update(cache, key_states, value_states, layer_idx, *args, **kwargs)

    cache.update = update
    return cache


class LastTokenMaps(SublayerMaps):
    """:class:`rsdyn.models.sublayer_maps.SublayerMaps` whose prefix cache hands the last
    token's own key and value to :func:`last_token_attention` as they enter it.

    A map's cache is a shallow copy of the prefix cache with shallow copies of its layers
    (instead of a deep copy of every tensor: 20 ms a map on the default model): a dynamic
    cache layer's update binds new, concatenated tensors to the copy and leaves the prefix's
    own tensors untouched (a cache that wrote into them in place would change every later
    map, which the chain check would catch)."""

    def fresh_cache(self):
        if self.cache is None:
            return None
        layers = getattr(self.cache, "layers", None)
        if not isinstance(layers, list):
            return _recording(super().fresh_cache())
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in layers]
        return _recording(cache)


def register() -> None:
    """Register :func:`last_token_attention` (with the eager masks) under :data:`NAME`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, last_token_attention)
    AttentionMaskInterface.register(NAME, eager_mask)


@contextlib.contextmanager
def attention_implementation(model, implementation: str = "last_token") -> Iterator[None]:
    """Run ``model`` under :func:`last_token_attention` (``"last_token"``) or the model's
    eager attention (``"eager"``) inside the block; the previous implementation is restored."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"jacobian.attention = {implementation!r}; allowed values are {', '.join(IMPLEMENTATIONS)}.")
    if implementation == "eager":
        with eager_attention(model):
            yield
        return
    register()
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous or "eager")
