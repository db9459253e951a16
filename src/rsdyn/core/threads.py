"""Thread counts of the numerical libraries inside a block of code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Run torch CPU ops on ``n_threads`` threads inside the block."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
