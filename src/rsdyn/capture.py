"""Capture stage: record the residual stream at the two hook sites of every layer.

Forward pre-hooks on each layer's pre-attn and pre-MLP modules record their input (the
residual stream) at one position per sequence (the last real token) and nothing else;
the hooks are removed in ``finally``. Batches are right-padded and bucketed by length.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from rsdyn.adapters import base_model, hook_sites
from rsdyn.jobs import progress

log = logging.getLogger(__name__)


class ResidualRecorder:
    """Context manager that records the residual stream at every sublayer.

    Set ``positions`` (LongTensor (B,), one index per row) before each forward; after
    it, ``states`` is a float32 tensor (B, 2L, D): sublayer 2l = input of layer l's
    pre-attn site, 2l+1 = input of its pre-MLP site, at those positions.
    ``positions=None`` records every position: ``states`` is then (B, T, 2L, D).
    """

    def __init__(self, model: torch.nn.Module, family: str = "auto"):
        self.sites = hook_sites(model, family)
        self.n_sublayers = 2 * len(self.sites)
        self.positions: torch.Tensor | None = None
        self.states: torch.Tensor | None = None
        self._handles: list = []

    def _hook(self, sublayer: int):
        def record(module, args, kwargs):  # noqa: ARG001 - hook signature
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.positions is None:
                picked = hidden
            else:
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                picked = hidden[rows, self.positions.to(hidden.device)]
            if self.states is None or self.states.shape[0] != hidden.shape[0] or self._fresh:
                shape = (*picked.shape[:-1], self.n_sublayers, picked.shape[-1])
                self.states = torch.empty(shape, dtype=torch.float32, device=hidden.device)
                self._fresh = False
            self.states[..., sublayer, :] = picked.float()

        return record

    def reset(self) -> None:
        """Start a new forward: the next recorded value allocates fresh storage."""
        self._fresh = True

    def __enter__(self) -> ResidualRecorder:
        self._fresh = True
        try:
            for layer, (pre_attn, pre_mlp) in enumerate(self.sites):
                self._handles.append(pre_attn.register_forward_pre_hook(self._hook(2 * layer), with_kwargs=True))
                self._handles.append(pre_mlp.register_forward_pre_hook(self._hook(2 * layer + 1), with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()


def make_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, bucket_by_length: bool = True
) -> list[np.ndarray]:
    """Group sequence indices into batches of at most ``max_batch_tokens`` padded tokens.

    With ``bucket_by_length`` the sequences are sorted by length first, so each batch
    pads little; otherwise they are taken in corpus order. Every index appears once.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable") if bucket_by_length else np.arange(len(lengths))
    batches, current, longest = [], [], 0
    for index in order:
        new_longest = max(longest, int(lengths[index]))
        if current and (new_longest * (len(current) + 1) > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(np.asarray(current))
            current, new_longest = [], int(lengths[index])
        current.append(int(index))
        longest = new_longest
    if current:
        batches.append(np.asarray(current))
    return batches


def pad_batch(sequences: Sequence[np.ndarray], pad_token: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, last_position)`` for a list of id arrays."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    last = torch.as_tensor([len(s) - 1 for s in sequences], dtype=torch.long)
    return input_ids, attention_mask, last


@torch.inference_mode()
def capture_last_token(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    *,
    family: str = "auto",
    max_batch_tokens: int = 8192,
    max_batch_size: int = 64,
    bucket_by_length: bool = True,
    pad_token: int = 0,
    desc: str = "capture",
) -> np.ndarray:
    """Residual stream of the last real token of each sequence: float32 (N, 2L, D).

    Runs the base model only (no LM head) in the model's dtype and device; the result is
    in the input order whatever the batching.
    """
    if not sequences:
        raise ValueError("No sequences to capture.")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("A sequence of length 0 cannot be captured.")
    device = next(model.parameters()).device
    decoder = base_model(model)
    batches = make_batches([len(s) for s in sequences], max_batch_tokens, max_batch_size, bucket_by_length)
    out: np.ndarray | None = None
    with ResidualRecorder(model, family) as recorder, progress(total=len(sequences), desc=desc, unit="seq") as bar:
        for batch in batches:
            input_ids, attention_mask, last = pad_batch([sequences[i] for i in batch], pad_token)
            recorder.reset()
            recorder.positions = last.to(device)
            decoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
            states = recorder.states.cpu().numpy()
            if out is None:
                out = np.empty((len(sequences), *states.shape[1:]), dtype=np.float32)
            out[batch] = states
            bar.update(len(batch))
    return out


def capture_store(
    model_dir: str,
    corpus_path: str,
    out_path: str,
    settings: dict,
    model_settings: dict,
    corpus_settings: dict | None = None,
) -> None:
    """Capture both conditions of a corpus file and write ``activations.zarr`` atomically.

    Arrays ``original`` and ``shuffled`` (N, 2L, D) float32 chunked along units,
    ``original_ids`` and ``shuffled_ids`` (N, max_len) int32 right-padded with -1, and
    the attributes of the data contract (DESIGN.md).
    """
    from rsdyn.adapters import adapter_for, model_family, sublayer_names
    from rsdyn.corpus import load_corpus
    from rsdyn.models import load_model, resolve_device, resolve_dtype
    from rsdyn.store import write_group

    device = resolve_device(settings["device"], "capture.device")
    dtype = resolve_dtype(settings["dtype"], device)
    model, tokenizer, provenance = load_model(model_dir, device=device, dtype=dtype)
    family = model_family(model, model_settings.get("family", "auto"))
    adapter_for(family)
    corpus = load_corpus(corpus_path)
    pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log.info("capturing %d sequences on %s in %s (%s family)", len(corpus.texts), device, dtype, family)
    states = {
        condition: capture_last_token(
            model,
            corpus.rows(condition),
            family=family,
            max_batch_tokens=settings["max_batch_tokens"],
            max_batch_size=settings["max_batch_size"],
            bucket_by_length=settings["bucket_by_length"],
            pad_token=pad_token,
            desc=f"capture {condition}",
        )
        for condition in ("original", "shuffled")
    }
    for condition, array in states.items():
        if not np.isfinite(array).all():
            raise FloatingPointError(f"The {condition} capture has non-finite values (compute dtype {dtype}).")
    n_samples, n_sublayers, d_model = states["original"].shape
    unit_chunk = min(settings["unit_chunk"], d_model)
    chunks = {name: (n_samples, n_sublayers, unit_chunk) for name in states}
    chunks.update({f"{name}_ids": corpus.original_ids.shape for name in states})
    attrs = {
        "model_name": model_settings["name"],
        "model_id": model_settings.get("id") or model_settings.get("pypi_key") or model_settings.get("path"),
        "model_revision": model_settings.get("revision", "main"),
        "model_source": model_settings["source"],
        "family": family,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "n_layers": n_sublayers // 2,
        "d_model": d_model,
        "n_samples": n_samples,
        "sublayer_names": sublayer_names(n_sublayers // 2),
        "texts": corpus.texts,
        "corpus_source": corpus.source,
        "config": {"model": model_settings, "corpus": corpus_settings or {}, "capture": settings},
    }
    write_group(
        out_path,
        {**states, "original_ids": corpus.original_ids, "shuffled_ids": corpus.shuffled_ids},
        attrs=attrs,
        chunks=chunks,
    )
