"""Where the residual stream lives in each architecture family.

A decoder layer has two hook sites: the module whose *input* is the residual stream
entering the layer before its attention norm (pre-attn), and the module whose input
is the residual stream after the attention residual add, before the MLP norm
(pre-MLP). Sublayer ``2l`` is layer ``l``'s pre-attn state, ``2l + 1`` its pre-MLP state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: the config imports this module without torch
    import torch.nn as nn


@dataclass(frozen=True)
class Adapter:
    """Hook sites of one architecture family (attribute names inside a decoder layer)."""

    family: str
    pre_attn_site: str
    pre_mlp_site: str


_LLAMA_LIKE = ("input_layernorm", "post_attention_layernorm")
_GEMMA_LIKE = ("input_layernorm", "pre_feedforward_layernorm")

#: model_type (config.model_type) -> adapter
ADAPTERS: dict[str, Adapter] = {
    family: Adapter(family, *sites)
    for family, sites in {
        "llama": _LLAMA_LIKE,
        "mistral": _LLAMA_LIKE,
        "qwen2": _LLAMA_LIKE,
        "qwen3": _LLAMA_LIKE,
        "gemma2": _GEMMA_LIKE,
        "gemma3": _GEMMA_LIKE,
        "gemma3_text": _GEMMA_LIKE,
    }.items()
}


class UnsupportedModelError(ValueError):
    """The model's family has no entry in the adapter table."""


def supported_families() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(family: str) -> Adapter:
    """The adapter of a family name (a ``config.model_type``); clear error if unknown."""
    try:
        return ADAPTERS[family]
    except KeyError:
        raise UnsupportedModelError(
            f"Unknown model family {family!r}: supported families are "
            f"{', '.join(supported_families())}."
        ) from None


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (``model.model`` of a *ForCausalLM)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    if hasattr(model, "layers"):
        return model
    raise UnsupportedModelError(
        f"{type(model).__name__} has no decoder stack at .model.layers or .layers."
    )


def model_family(model: nn.Module, family: str = "auto") -> str:
    """``family`` unless it is ``auto``, else the model's ``config.model_type``."""
    if family != "auto":
        return family
    return getattr(model.config, "model_type", type(model).__name__)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a causal LM or of its base model."""
    return base_model(model).layers


def hook_sites(model: nn.Module, family: str = "auto") -> list[tuple[nn.Module, nn.Module]]:
    """For each decoder layer, its (pre-attn module, pre-MLP module) pair."""
    adapter = adapter_for(model_family(model, family))
    sites = []
    for index, layer in enumerate(decoder_layers(model)):
        try:
            sites.append(
                (getattr(layer, adapter.pre_attn_site), getattr(layer, adapter.pre_mlp_site))
            )
        except AttributeError as err:
            raise UnsupportedModelError(
                f"Layer {index} of {type(model).__name__} lacks the {adapter.family} hook "
                f"site: {err}."
            ) from None
    return sites


def sublayer_names(n_layers: int) -> list[str]:
    """``L{l}.pre_attn``, ``L{l}.pre_mlp`` interleaved, 2L names."""
    return [f"L{l}.{site}" for l in range(n_layers) for site in ("pre_attn", "pre_mlp")]
