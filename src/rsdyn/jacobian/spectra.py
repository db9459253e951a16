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
- singular values and two effective ranks of them: the participation ratio
  (sum sigma^2)^2 / sum sigma^4 and exp of the Shannon entropy of p_i = sigma_i / sum sigma
  (Roy & Vetterli 2007); both lie in [1, D] for a non-zero matrix and are 0 for zero;
- the singular values of the cumulative product J_s ... J_0 over depth and finite-depth
  Lyapunov exponents, by QR re-orthonormalisation (Benettin et al. 1980): the product is
  kept as Q_s T_s with Q_s orthogonal and T_s = R_s ... R_0 upper triangular, rescaled
  with its log scale kept apart, so it never overflows; its singular values are resolved
  down to about eps x the largest (enough for the effective ranks, which the largest
  dominate), the Lyapunov exponents from the QR diagonal at every scale.
"""

from __future__ import annotations

import torch


def _frobenius_squared(matrices: torch.Tensor) -> torch.Tensor:
    return matrices.abs().square().sum(dim=(-2, -1))


def sorted_eigenvalues(matrices: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of each matrix, complex ``(..., D)``, sorted by modulus, largest first
    (a stable sort: equal moduli keep LAPACK's order, conjugate pairs stay adjacent)."""
    values = torch.linalg.eigvals(matrices)
    order = torch.sort(values.abs(), dim=-1, descending=True, stable=True).indices
    return torch.gather(values, -1, order)


def spectral_radius(eigenvalues: torch.Tensor) -> torch.Tensor:
    """max |lambda| over the last axis."""
    return eigenvalues.abs().amax(dim=-1)


def rotation_index(eigenvalues: torch.Tensor) -> torch.Tensor:
    """sum |Im lambda| / sum |lambda| over the last axis (0 when every lambda is 0)."""
    total = eigenvalues.abs().sum(dim=-1)
    rotating = eigenvalues.imag.abs().sum(dim=-1)
    return torch.where(total > 0, rotating / torch.where(total > 0, total, 1), torch.zeros_like(total))


def henrici_departure(matrices: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    """Normalised Henrici departure from normality sqrt(max(||J||_F^2 - sum |lambda|^2, 0)) / ||J||_F
    (0 for the zero matrix). Rounding leaves a floor of about sqrt(D * eps) on normal matrices."""
    frobenius = _frobenius_squared(matrices)
    excess = (frobenius - eigenvalues.abs().square().sum(dim=-1)).clamp_min(0)
    safe = torch.where(frobenius > 0, frobenius, 1)
    return torch.where(frobenius > 0, torch.sqrt(excess / safe), torch.zeros_like(frobenius))


def antisymmetric_share(matrices: torch.Tensor) -> torch.Tensor:
    """||(J - J^T)/2||_F / ||J||_F (0 for the zero matrix)."""
    frobenius = _frobenius_squared(matrices)
    antisymmetric = _frobenius_squared((matrices - matrices.mT) / 2)
    safe = torch.where(frobenius > 0, frobenius, 1)
    return torch.where(frobenius > 0, torch.sqrt(antisymmetric / safe), torch.zeros_like(frobenius))


def singular_values(matrices: torch.Tensor) -> torch.Tensor:
    """Singular values ``(..., D)``, largest first."""
    return torch.linalg.svdvals(matrices)


def participation_ratio(singular: torch.Tensor) -> torch.Tensor:
    """(sum sigma^2)^2 / sum sigma^4 over the last axis (0 when every sigma is 0)."""
    energy = singular.square()
    scale = energy.amax(dim=-1, keepdim=True)
    energy = energy / torch.where(scale > 0, scale, 1)  # scale-free, no overflow of sigma^4
    numerator, denominator = energy.sum(dim=-1).square(), energy.square().sum(dim=-1)
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1), torch.zeros_like(denominator))


def entropy_effective_rank(singular: torch.Tensor) -> torch.Tensor:
    """exp(-sum p log p), p = sigma / sum sigma, over the last axis (0 when every sigma is 0)."""
    total = singular.sum(dim=-1, keepdim=True)
    p = singular / torch.where(total > 0, total, 1)
    entropy = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1)), torch.zeros_like(p)).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def cumulative_product_spectrum(jacobians: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of every cumulative product P_s = J_s ... J_0 and finite-depth
    Lyapunov exponents, for ``jacobians`` ``(..., S, D, D)`` ordered by depth (J_0 first).

    Returns float64 ``(log_singular (..., S, D), lyapunov (..., S, D))``:
    ``log_singular[..., s, :]`` = log of the singular values of P_s, largest first (-inf for
    an exact zero); ``lyapunov[..., s, :]`` = (1 / (s + 1)) sum_{k <= s} log |R_k,ii| from the
    QR re-orthonormalisation J_k Q_{k-1} = Q_k R_k, sorted largest first (nats per transition).
    Computed in float64 whatever the input dtype.
    """
    jacobians = jacobians.to(torch.float64)
    *batch, depth, dim, _ = jacobians.shape
    eye = torch.eye(dim, dtype=torch.float64, device=jacobians.device)
    basis = eye.expand(*batch, dim, dim)
    triangle = basis.clone()
    log_scale = torch.zeros(batch, dtype=torch.float64, device=jacobians.device)
    stretch = torch.zeros((*batch, dim), dtype=torch.float64, device=jacobians.device)
    log_singular, lyapunov = [], []
    for step in range(depth):
        basis, upper = torch.linalg.qr(jacobians[..., step, :, :] @ basis)
        signs = torch.where(torch.diagonal(upper, dim1=-2, dim2=-1) < 0, -1.0, 1.0)
        basis, upper = basis * signs.unsqueeze(-2), upper * signs.unsqueeze(-1)  # positive diagonal
        stretch = stretch + torch.log(torch.diagonal(upper, dim1=-2, dim2=-1))
        triangle = upper @ triangle
        scale = triangle.abs().amax(dim=(-2, -1))
        scale = torch.where(scale > 0, scale, 1)
        triangle = triangle / scale[..., None, None]
        log_scale = log_scale + torch.log(scale)
        log_singular.append(torch.log(torch.linalg.svdvals(triangle)) + log_scale.unsqueeze(-1))
        lyapunov.append(torch.sort(stretch / (step + 1), dim=-1, descending=True).values)
    return torch.stack(log_singular, dim=-2), torch.stack(lyapunov, dim=-2)


def matrix_spectra(jacobians: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every per-matrix quantity of ``jacobians`` ``(..., D, D)`` (each J = I + U, U the update).

    The eigenvalues are computed once, of the update U = J - I (backward error relative
    to ||U||, not ||J||), and shifted by 1 for J. Keys: ``eigenvalues`` (of J, complex,
    largest modulus first) and, for J (no prefix) and for U (prefix ``update_``):
    ``spectral_radius``, ``rotation_index``, ``henrici``, ``antisymmetric_share``,
    ``frobenius_norm``, ``singular_values`` (largest first), ``effective_rank_pr`` and
    ``effective_rank_entropy``.
    """
    dim = jacobians.shape[-1]
    update = jacobians - torch.eye(dim, dtype=jacobians.dtype, device=jacobians.device)
    update_eigenvalues = torch.linalg.eigvals(update)
    out: dict[str, torch.Tensor] = {}
    for prefix, matrices, eigenvalues in (("", jacobians, update_eigenvalues + 1), ("update_", update, update_eigenvalues)):
        order = torch.sort(eigenvalues.abs(), dim=-1, descending=True, stable=True).indices
        eigenvalues = torch.gather(eigenvalues, -1, order)
        singular = singular_values(matrices)
        if not prefix:
            out["eigenvalues"] = eigenvalues
        out[prefix + "spectral_radius"] = spectral_radius(eigenvalues)
        out[prefix + "rotation_index"] = rotation_index(eigenvalues)
        out[prefix + "henrici"] = henrici_departure(matrices, eigenvalues)
        out[prefix + "antisymmetric_share"] = antisymmetric_share(matrices)
        out[prefix + "frobenius_norm"] = torch.sqrt(_frobenius_squared(matrices))
        out[prefix + "singular_values"] = singular
        out[prefix + "effective_rank_pr"] = participation_ratio(singular)
        out[prefix + "effective_rank_entropy"] = entropy_effective_rank(singular)
    return out


def cumulative_spectra(jacobians: torch.Tensor) -> dict[str, torch.Tensor]:
    """The depth-cumulative quantities of ``jacobians`` ``(..., S, D, D)`` (J_0 first):
    ``cumulative_log_singular_values`` and ``lyapunov`` (:func:`cumulative_product_spectrum`)
    and the effective ranks of each product, ``cumulative_effective_rank_pr`` and
    ``cumulative_effective_rank_entropy`` (scale-free, so computed from the singular
    values divided by the largest)."""
    log_singular, lyapunov = cumulative_product_spectrum(jacobians)
    relative = torch.exp(log_singular - log_singular[..., :1])
    return {
        "cumulative_log_singular_values": log_singular,
        "lyapunov": lyapunov,
        "cumulative_effective_rank_pr": participation_ratio(relative),
        "cumulative_effective_rank_entropy": entropy_effective_rank(relative),
    }

