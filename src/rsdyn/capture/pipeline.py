"""The device side of the capture pipeline: batch inputs uploaded ahead of their forward,
each block's rows gathered where they are recorded, and the block copied to the host in
one non-blocking transfer that the block's writer waits for, not the forward loop.

On CUDA (``staged``): a batch's states stay on the device and are scattered into a
device block (``index_copy_``, no host round trip per batch); when the block is complete
it is copied into pinned host memory on a separate copy stream, so the forwards of the
next block run while the copy (and, on the writer thread, the block's compression and
write) proceed. Batch inputs are padded and uploaded (pinned, non-blocking) while the
previous forward runs. On the CPU the states are scattered straight into a NumPy block;
``staged=True`` runs the CUDA code path on the CPU (the same device block and copy, no
streams), which is how the tests check it. Both give the same float32 values bit for
bit: the pipeline only moves recorded states, it computes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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


class PendingBlock:
    """A block of states on its way to the host: ``wait()`` returns it as a float32 NumPy
    array (after its device-to-host copy, when there is one); ``shape`` is known before."""

    def __init__(self, host: np.ndarray | torch.Tensor, event: torch.cuda.Event | None = None):
        self._host = host
        self._event = event
        self.shape = tuple(host.shape)

    def wait(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host.numpy() if isinstance(self._host, torch.Tensor) else self._host


class BlockStage:
    """Gathers one block's rows from its batches and hands the block to the host.

    ``staged`` (default: on CUDA) keeps the block on the device and copies it to
    (pinned) host memory in one non-blocking transfer on a copy stream; otherwise (CPU
    only) each batch's states are written into a NumPy block directly."""

    def __init__(self, device: torch.device | str, staged: bool | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.staged = self.cuda if staged is None else bool(staged)
        if self.cuda and not self.staged:
            raise ValueError("a CUDA capture gathers its blocks on the device (staged); staged=False is for the CPU only.")
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._rows = 0
        self._block: np.ndarray | torch.Tensor | None = None

    def upload(self, sequences: Sequence[np.ndarray], batch: np.ndarray, pad_token: int) -> dict[str, torch.Tensor]:
        """The padded inputs of ``batch`` (rows of ``sequences``) on the device: pinned and
        copied without blocking on CUDA, so that the host pads the next batch while the
        device runs the current one."""
        input_ids, attention_mask, last = pad_batch([sequences[i] for i in batch], pad_token)
        tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "last": last}
        if self.staged:
            tensors["rows"] = torch.as_tensor(batch, dtype=torch.long)
        if self.cuda:
            return {name: tensor.pin_memory().to(self.device, non_blocking=True) for name, tensor in tensors.items()}
        return tensors

    def start(self, n_rows: int) -> None:
        """Begin a block of ``n_rows`` rows (allocated at the first batch, whose states give
        the row shape)."""
        self._rows = n_rows
        self._block = None

    def put(self, batch: np.ndarray, inputs: dict[str, torch.Tensor], states: torch.Tensor) -> None:
        """Place one batch's states (B, 2L, D) float32 at its rows ``batch`` of the block."""
        if self._block is None:
            shape = (self._rows, *states.shape[1:])
            if self.staged:
                self._block = torch.empty(shape, dtype=torch.float32, device=states.device)
            else:
                self._block = np.empty(shape, dtype=np.float32)
        if self.staged:
            self._block.index_copy_(0, inputs["rows"], states)
        else:
            self._block[batch] = states.numpy()

    def finish(self) -> PendingBlock:
        """Hand the complete block to the host: on CUDA a non-blocking copy into pinned
        memory on the copy stream, after the forwards that filled the block."""
        block, self._block = self._block, None
        if block is None:
            raise ValueError("BlockStage.finish() before any batch was put.")
        if not self.staged:
            return PendingBlock(block)
        host = torch.empty(block.shape, dtype=torch.float32, pin_memory=self.cuda)
        if not self.cuda:
            host.copy_(block)
            return PendingBlock(host)
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy_stream):
            host.copy_(block, non_blocking=True)
            block.record_stream(self.copy_stream)  # not reused by the next block before the copy ends
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return PendingBlock(host, event)
