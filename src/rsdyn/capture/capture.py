"""Capture: record the residual stream of the last real token at the two hook sites of
every layer (:class:`rsdyn.models.recorder.ResidualRecorder`), for batches of token
sequences right-padded and bucketed by length (a block's batches depend only on the
block's rows; see :mod:`rsdyn.capture.run` for why). How the states travel from the
device to the host without stalling the forwards: :mod:`rsdyn.capture.pipeline`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rsdyn.capture.pipeline import BlockStage, PendingBlock, pad_batch  # noqa: F401 - pad_batch is used by the benchmarks
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


def _forward_rows(
    model: torch.nn.Module,
    recorder: ResidualRecorder,
    stage: BlockStage,
    sequences: Sequence[np.ndarray],
    *,
    max_batch_tokens: int,
    max_batch_size: int,
    bucket_by_length: bool,
    pad_token: int,
    bar,
) -> PendingBlock:
    """Residual stream of the last real token of ``sequences`` as one block of ``stage``:
    float32 (n, 2L, D) in input order, on its way to the host. Batches are formed from
    these rows only; each batch's inputs are uploaded while the previous forward runs."""
    decoder = base_model(model)
    batches = make_batches([len(s) for s in sequences], max_batch_tokens, max_batch_size, bucket_by_length)
    stage.start(len(sequences))
    upcoming = stage.upload(sequences, batches[0], pad_token)
    for position, batch in enumerate(batches):
        inputs = upcoming
        recorder.reset()
        recorder.positions = inputs["last"]
        decoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        if position + 1 < len(batches):
            upcoming = stage.upload(sequences, batches[position + 1], pad_token)
        stage.put(batch, inputs, recorder.states)
        bar.update(len(batch))
    return stage.finish()


def _check_sequences(sequences: Sequence[np.ndarray]) -> None:
    if not len(sequences):
        raise ValueError("No sequences to capture.")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("A sequence of length 0 cannot be captured.")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    staged: bool | None = None,
) -> np.ndarray:
    """Residual stream of the last real token of each sequence: float32 (N, 2L, D), in memory.

    Runs the base model only (no LM head) in the model's dtype and device; the result is
    in the input order whatever the batching. ``capture_blocks`` is the streamed form;
    ``staged``: see :class:`rsdyn.capture.pipeline.BlockStage` (default: on CUDA).
    """
    _check_sequences(sequences)
    stage = BlockStage(_device(model), staged)
    with ResidualRecorder(model, family) as recorder, progress(total=len(sequences), desc=desc, unit="seq") as bar:
        return _forward_rows(
            model, recorder, stage, sequences, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
            bucket_by_length=bucket_by_length, pad_token=pad_token, bar=bar,
        ).wait()


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
    staged: bool | None = None,
) -> Iterator[tuple[int, PendingBlock]]:
    """Yield ``(start, pending)`` for each ``(start, stop)`` row range of ``blocks``, in order:
    ``pending.wait()`` is float32 (stop - start, 2L, D) of ``sequences[start:stop]``,
    batched (and bucketed by length) within the block only, so a row's batch never
    depends on rows outside its block. Every block is its own array: the caller may keep
    it, or hand it to a writer thread and ask for the next block at once (whose forwards
    then overlap the block's copy to the host and its write)."""
    _check_sequences(sequences)
    total = sum(stop - start for start, stop in blocks)
    stage = BlockStage(_device(model), staged)
    with ResidualRecorder(model, family) as recorder, progress(total=total, desc=desc, unit="seq") as bar:
        for start, stop in blocks:
            rows = sequences[start:stop]
            _check_sequences(rows)
            yield start, _forward_rows(
                model, recorder, stage, rows, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                bucket_by_length=bucket_by_length, pad_token=pad_token, bar=bar,
            )


# --------------------------------------------------------------------------- layout


# --------------------------------------------------------------------------- stores


# --------------------------------------------------------------------------- workflow helpers


