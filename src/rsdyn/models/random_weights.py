"""Random weights of a model's architecture (``model.weights: random``): the config of the
source (or of an ``model.architecture`` file, resized to the source's tokenizer) and
weights drawn by the family's own initializer (transformers' ``_init_weights``, run by
``AutoModelForCausalLM.from_config``) under a seeded generator.

The draw happens on the CPU in float32 with the global torch generator seeded by
``init_seed`` (and restored afterwards), so the same seed gives the same weights bit for
bit on any machine with the same torch; the model rule saves them like trained weights,
and every later rule loads the folder as it loads any converted model."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def architecture_config(path: str | Path, tokenizer):
    """The transformers config of an architecture file (a ``config.json``) resized to
    ``tokenizer``: ``vocab_size`` = the tokenizer's length, and the BOS, EOS and padding
    ids set to the tokenizer's (the file's ids belong to its own vocabulary)."""
    from transformers import AutoConfig

    values = json.loads(Path(path).read_text())
    values.pop("transformers_version", None)
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **values)
    config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name, None))
    return config


def without_quantization(config):
    """``config`` without the quantisation record a GGUF source leaves on it."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def random_model(config, seed: int, dtype: torch.dtype = torch.float32):
    """A causal LM of ``config`` initialised by its family's initializer with the CPU
    generator seeded by ``seed`` (the global random state is left as it was); eval mode."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    return model.eval()


def describe(config) -> dict:
    """What the provenance file records of a random model's architecture."""
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "max_position_embeddings")
    return {key: getattr(config, key) for key in keys if getattr(config, key, None) is not None}
