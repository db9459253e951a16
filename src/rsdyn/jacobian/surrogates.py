"""Surrogate updates built from a trained update U = J - I (beyond the paper: is the
spectral geometry of the trained Jacobians more than the size of their updates?).

- ``svd_matched``: U's singular values with random orthogonal left and right singular
  vectors, Q_1 diag(sigma) Q_2^T, Q_1 and Q_2 independent and Haar-distributed (the QR
  decomposition of a Gaussian matrix with the signs of R's diagonal made positive,
  Mezzadri 2007): the same magnitudes in every direction, no learned orientation.
- ``norm_matched``: a Gaussian matrix scaled to U's Frobenius norm: only the total size kept.

The surrogate Jacobian is I + the surrogate update. Every draw comes from a
``torch.Generator`` seeded by :func:`surrogate_seed` (run seed, corpus row, kind, draw),
so a draw does not depend on the order in which sequences are processed.
"""

from __future__ import annotations

import numpy as np
import torch

SURROGATES = ("svd_matched", "norm_matched")


def surrogate_seed(seed: int, corpus_row: int, kind: str, draw: int) -> int:
    """The generator seed of one surrogate draw of one sequence: a 63-bit integer from
    NumPy's SeedSequence of (seed, corpus_row, the kind's position in SURROGATES, draw)."""
    entropy = [int(seed), int(corpus_row), SURROGATES.index(kind), int(draw)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    out = torch.Generator(device=device)
    out.manual_seed(int(seed))
    return out


def haar_orthogonal(dim: int, rng: torch.Generator, dtype=torch.float64, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Haar-distributed orthogonal matrices ``(*shape, dim, dim)``: Q of the QR decomposition
    of a standard Gaussian matrix, each column's sign chosen so that R's diagonal is positive."""
    gaussian = torch.randn((*shape, dim, dim), generator=rng, dtype=dtype, device=rng.device)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(dtype)
    return q * signs.unsqueeze(-2)


def svd_matched(singular: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Q_1 diag(``singular``) Q_2^T for singular values ``(..., D)``, Q_1 and Q_2 Haar."""
    dim = singular.shape[-1]
    left = haar_orthogonal(dim, rng, singular.dtype, tuple(singular.shape[:-1]))
    right = haar_orthogonal(dim, rng, singular.dtype, tuple(singular.shape[:-1]))
    return (left * singular.unsqueeze(-2)) @ right.mT


def norm_matched(frobenius: torch.Tensor, dim: int, rng: torch.Generator) -> torch.Tensor:
    """Gaussian matrices ``(..., dim, dim)`` scaled to the Frobenius norms ``frobenius`` ``(...)``."""
    gaussian = torch.randn((*frobenius.shape, dim, dim), generator=rng, dtype=frobenius.dtype, device=rng.device)
    norm = gaussian.square().sum(dim=(-2, -1)).sqrt()
    return gaussian * (frobenius / norm)[..., None, None]
