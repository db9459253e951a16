"""Capture: record the residual stream of the last real token at the two hook sites of
every layer (:class:`rsdyn.models.recorder.ResidualRecorder`), for batches of token
sequences right-padded and bucketed by length (a block's batches depend only on the
block's rows; see :mod:`rsdyn.capture.run` for why)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rsdyn.core.jobs import progress
from rsdyn.models.adapters import base_model
from rsdyn.models.recorder import ResidualRecorder

log = logging.getLogger(__name__)


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


def _forward_rows(
    model: torch.nn.Module,
    recorder: ResidualRecorder,
    sequences: Sequence[np.ndarray],
    out: np.ndarray | None,
    *,
    max_batch_tokens: int,
    max_batch_size: int,
    bucket_by_length: bool,
    pad_token: int,
    bar,
) -> np.ndarray:
    """Residual stream of the last real token of ``sequences`` into ``out`` (allocated when
    None): float32 (n, 2L, D) in input order. Batches are formed from these rows only."""
    device = next(model.parameters()).device
    decoder = base_model(model)
    for batch in make_batches([len(s) for s in sequences], max_batch_tokens, max_batch_size, bucket_by_length):
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


def _check_sequences(sequences: Sequence[np.ndarray]) -> None:
    if not len(sequences):
        raise ValueError("No sequences to capture.")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("A sequence of length 0 cannot be captured.")


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
    """Residual stream of the last real token of each sequence: float32 (N, 2L, D), in memory.

    Runs the base model only (no LM head) in the model's dtype and device; the result is
    in the input order whatever the batching. ``capture_blocks`` is the streamed form.
    """
    _check_sequences(sequences)
    with ResidualRecorder(model, family) as recorder, progress(total=len(sequences), desc=desc, unit="seq") as bar:
        return _forward_rows(
            model, recorder, sequences, None, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
            bucket_by_length=bucket_by_length, pad_token=pad_token, bar=bar,
        )


@torch.inference_mode()
def capture_blocks(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    blocks: Sequence[tuple[int, int]],
    *,
    family: str = "auto",
    max_batch_tokens: int = 8192,
    max_batch_size: int = 64,
    bucket_by_length: bool = True,
    pad_token: int = 0,
    desc: str = "capture",
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, states)`` for each ``(start, stop)`` row range of ``blocks``, in order:
    float32 (stop - start, 2L, D) of ``sequences[start:stop]``, batched (and bucketed by
    length) within the block only, so a row's batch never depends on rows outside its block.
    One block's buffer is reused: copy or write it before asking for the next."""
    _check_sequences(sequences)
    total = sum(stop - start for start, stop in blocks)
    buffer: np.ndarray | None = None
    with ResidualRecorder(model, family) as recorder, progress(total=total, desc=desc, unit="seq") as bar:
        for start, stop in blocks:
            rows = sequences[start:stop]
            _check_sequences(rows)
            out = buffer[: stop - start] if buffer is not None and len(buffer) >= stop - start else None
            out = _forward_rows(
                model, recorder, rows, out, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                bucket_by_length=bucket_by_length, pad_token=pad_token, bar=bar,
            )
            if buffer is None:
                buffer = out
            yield start, out


# --------------------------------------------------------------------------- layout


# --------------------------------------------------------------------------- stores


# --------------------------------------------------------------------------- workflow helpers


