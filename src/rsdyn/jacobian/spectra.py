"""Spectral geometry of square matrices (Jacobians of the residual-stream updates).

Pure functions over stacks of matrices ``(..., D, D)`` (torch tensors, any device),
vectorised over the leading axes; every quantity is dimensionless.

- eigenvalues sorted by modulus (largest first), spectral radius max |lambda|;
- ``rotation_index`` = sum |Im lambda| / sum |lambda| (0 for a real spectrum, 1 for a
  purely imaginary one);
- Henrici's departure from normality, normalised:
  sqrt(||J||_F^2 - sum |lambda|^2) / ||J||_F (0 for a normal matrix, up to 1 for a
  nilpotent one);
- the antisymmetric share ||(J - J^T)/2||_F / ||J||_F (0 symmetric, 1 antisymmetric);
- two effective ranks of the singular values: the participation ratio
  (sum sigma^2)^2 / sum sigma^4, which needs no SVD (it is ||A||_F^4 / ||A^T A||_F^2), and
  exp of the Shannon entropy of p_i = sigma_i / sum sigma (Roy & Vetterli 2007); both lie
  in [1, D] for a non-zero matrix and are 0 for zero;
- the cumulative product P_s = J_s ... J_0 over depth (:class:`ProductChain`): kept
  rescaled to a largest entry of 1 with its log scale apart, so it never overflows; its
  singular values (resolved down to about eps x the largest, enough for the effective
  ranks, which the largest dominate), their effective ranks and the finite-depth
  Lyapunov exponents (1/(s+1)) log sigma_i(P_s).
"""

from __future__ import annotations

import torch


def frobenius_squared(matrices: torch.Tensor) -> torch.Tensor:
    """||A||_F^2 of each matrix ``(..., D, D)``."""
    return matrices.abs().square().sum(dim=(-2, -1))


def sorted_eigenvalues(matrices: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of each matrix, complex ``(..., D)``, sorted by modulus, largest first
    (a stable sort: equal moduli keep LAPACK's order, conjugate pairs stay adjacent)."""
    return sort_by_modulus(torch.linalg.eigvals(matrices))


def sort_by_modulus(eigenvalues: torch.Tensor) -> torch.Tensor:
    """``eigenvalues`` ``(..., D)`` sorted by modulus, largest first (stable)."""
    order = torch.sort(eigenvalues.abs(), dim=-1, descending=True, stable=True).indices
    return torch.gather(eigenvalues, -1, order)


def spectral_radius(eigenvalues: torch.Tensor) -> torch.Tensor:
    """max |lambda| over the last axis."""
    return eigenvalues.abs().amax(dim=-1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1), torch.zeros_like(denominator))


def rotation_index(eigenvalues: torch.Tensor) -> torch.Tensor:
    """sum |Im lambda| / sum |lambda| over the last axis (0 when every lambda is 0)."""
    return _ratio(eigenvalues.imag.abs().sum(dim=-1), eigenvalues.abs().sum(dim=-1))


def henrici_departure(matrices: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    """Normalised Henrici departure from normality sqrt(max(||J||_F^2 - sum |lambda|^2, 0)) / ||J||_F
    (0 for the zero matrix). Rounding leaves a floor of about sqrt(D * eps) on normal matrices."""
    frobenius = frobenius_squared(matrices)
    excess = (frobenius - eigenvalues.abs().square().sum(dim=-1)).clamp_min(0)
    return torch.sqrt(_ratio(excess, frobenius))


def antisymmetric_share(matrices: torch.Tensor) -> torch.Tensor:
    """||(J - J^T)/2||_F / ||J||_F (0 for the zero matrix)."""
    return torch.sqrt(_ratio(frobenius_squared((matrices - matrices.mT) / 2), frobenius_squared(matrices)))


def singular_values(matrices: torch.Tensor) -> torch.Tensor:
    """Singular values ``(..., D)``, largest first."""
    return torch.linalg.svdvals(matrices)


def participation_ratio(singular: torch.Tensor) -> torch.Tensor:
    """(sum sigma^2)^2 / sum sigma^4 over the last axis (0 when every sigma is 0)."""
    energy = singular.square()
    scale = energy.amax(dim=-1, keepdim=True)
    energy = energy / torch.where(scale > 0, scale, 1)  # scale-free, no overflow of sigma^4
    return _ratio(energy.sum(dim=-1).square(), energy.square().sum(dim=-1))


def matrix_participation_ratio(matrices: torch.Tensor) -> torch.Tensor:
    """:func:`participation_ratio` of the singular values of each matrix without an SVD:
    sum sigma^2 = ||A||_F^2 and sum sigma^4 = ||A^T A||_F^2 (one matrix product)."""
    scale = matrices.abs().amax(dim=(-2, -1), keepdim=True)
    scaled = matrices / torch.where(scale > 0, scale, 1)
    return _ratio(frobenius_squared(scaled).square(), frobenius_squared(scaled.mT @ scaled))


def entropy_effective_rank(singular: torch.Tensor) -> torch.Tensor:
    """exp(-sum p log p), p = sigma / sum sigma, over the last axis (0 when every sigma is 0)."""
    total = singular.sum(dim=-1, keepdim=True)
    p = singular / torch.where(total > 0, total, 1)
    entropy = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1)), torch.zeros_like(p)).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def operator_spectra(
    eigenvalues: torch.Tensor, frobenius: torch.Tensor, antisymmetric: torch.Tensor, gram: torch.Tensor, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The per-matrix quantities of a matrix A from its ``eigenvalues`` (any order),
    ``frobenius`` = ||A||_F^2, ``antisymmetric`` = ||(A - A^T)/2||_F^2 and ``gram`` =
    ||A^T A||_F^2 = sum sigma^4, keys prefixed by ``prefix``: ``spectral_radius``,
    ``rotation_index``, ``henrici``, ``antisymmetric_share``, ``frobenius_norm`` and
    ``effective_rank_pr``."""
    return {
        prefix + "spectral_radius": spectral_radius(eigenvalues),
        prefix + "rotation_index": rotation_index(eigenvalues),
        prefix + "henrici": torch.sqrt(_ratio((frobenius - eigenvalues.abs().square().sum(dim=-1)).clamp_min(0), frobenius)),
        prefix + "antisymmetric_share": torch.sqrt(_ratio(antisymmetric, frobenius)),
        prefix + "frobenius_norm": torch.sqrt(frobenius),
        prefix + "effective_rank_pr": _ratio(frobenius.square(), gram),
    }


def matrix_spectra(jacobians: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every per-matrix quantity of ``jacobians`` ``(..., D, D)`` (each J = I + U, U the update).

    One eigendecomposition, of the update U = J - I (backward error relative to ||U||,
    not ||J||); the eigenvalues of J are those of U plus 1. No SVD: the effective ranks are
    participation ratios, from G = U^T U and J^T J = I + U + U^T + G (one matrix product);
    J and U share their antisymmetric part. Keys: ``eigenvalues`` (of J, complex, largest
    modulus first) and, for J (no prefix) and for U (prefix ``update_``), those of
    :func:`operator_spectra`.
    """
    dim = jacobians.shape[-1]
    eye = torch.eye(dim, dtype=jacobians.dtype, device=jacobians.device)
    update = jacobians - eye
    update_eigenvalues = torch.linalg.eigvals(update)
    symmetric = update + update.mT
    update_gram = update.mT @ update
    antisymmetric = frobenius_squared((update - update.mT) / 2)
    return {
        "eigenvalues": sort_by_modulus(update_eigenvalues + 1),
        **operator_spectra(update_eigenvalues + 1, frobenius_squared(jacobians), antisymmetric,
                           frobenius_squared(update_gram + symmetric + eye)),
        **operator_spectra(update_eigenvalues, frobenius_squared(update), antisymmetric, frobenius_squared(update_gram), "update_"),
    }


class ProductChain:
    """The cumulative product P_s = J_s ... J_0, one factor at a time (:meth:`step`), and
    its spectra when asked (:meth:`spectra`: one SVD).

    P is kept divided by its largest entry, the log of the scale apart, in the dtype of
    the factors, so it never overflows; its singular values are resolved down to about
    eps x the largest (enough for the effective ranks, which the largest dominate).
    """

    def __init__(self) -> None:
        self.product: torch.Tensor | None = None
        self.log_scale: torch.Tensor | None = None
        self.depth = 0

    def step(self, jacobian: torch.Tensor) -> None:
        """P <- J P (the first factor starts the product)."""
        product = jacobian.clone() if self.product is None else jacobian @ self.product
        scale = product.abs().amax(dim=(-2, -1))
        scale = torch.where(scale > 0, scale, 1)
        self.product = product / scale[..., None, None]
        self.log_scale = torch.log(scale) if self.log_scale is None else self.log_scale + torch.log(scale)
        self.depth += 1

    def spectra(self) -> dict[str, torch.Tensor]:
        """Of the current product P_s (s + 1 = the number of factors): ``log_singular_values``
        (log sigma_i(P_s), largest first; -inf for an exact zero), ``effective_rank_pr``,
        ``effective_rank_entropy`` and ``lyapunov``, the finite-depth Lyapunov exponents
        (1/(s+1)) log sigma_i(P_s) (nats per transition)."""
        relative = singular_values(self.product)
        log_singular = torch.log(relative) + self.log_scale.unsqueeze(-1)
        return {
            "log_singular_values": log_singular,
            "effective_rank_pr": participation_ratio(relative),
            "effective_rank_entropy": entropy_effective_rank(relative),
            "lyapunov": log_singular / self.depth,
        }


def cumulative_spectra(jacobians: torch.Tensor, depths=None) -> dict[str, torch.Tensor]:
    """:class:`ProductChain` over ``jacobians`` ``(..., S, D, D)`` ordered by depth (J_0
    first), its spectra after the transitions ``depths`` (default every one, 0 .. S-1):
    ``cumulative_log_singular_values`` and ``lyapunov`` ``(..., n_depths, D)``,
    ``cumulative_effective_rank_pr`` and ``cumulative_effective_rank_entropy`` ``(..., n_depths)``."""
    depths = set(range(jacobians.shape[-3]) if depths is None else (int(depth) for depth in depths))
    chain, steps = ProductChain(), []
    for depth in range(jacobians.shape[-3]):
        chain.step(jacobians[..., depth, :, :])
        if depth in depths:
            steps.append(chain.spectra())
    return stack_cumulative(steps, batch=jacobians.ndim - 3)


CUMULATIVE_NAMES = {
    "log_singular_values": "cumulative_log_singular_values", "lyapunov": "lyapunov",
    "effective_rank_pr": "cumulative_effective_rank_pr", "effective_rank_entropy": "cumulative_effective_rank_entropy",
}


def stack_cumulative(steps, batch: int = 0) -> dict[str, torch.Tensor]:
    """:meth:`ProductChain.spectra` of several depths stacked after the ``batch`` leading axes,
    under their store names (``cumulative_...``, ``lyapunov``)."""
    return {name: torch.stack([step[key] for step in steps], dim=batch) for key, name in CUMULATIVE_NAMES.items()}
