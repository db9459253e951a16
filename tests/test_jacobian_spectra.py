"""Spectra of Jacobians (rsdyn.jacobian.spectra) and the surrogate updates
(rsdyn.jacobian.surrogates), against slow NumPy references on random matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsdyn.jacobian.spectra import (
    ProductChain,
    cumulative_spectra,
    entropy_effective_rank,
    matrix_participation_ratio,
    matrix_spectra,
)
from rsdyn.jacobian.surrogates import (
    SURROGATES,
    generator,
    haar_orthogonal,
    norm_matched,
    surrogate_seed,
    svd_matched,
)

EPS64 = np.finfo(np.float64).eps


def _random_matrices(count: int, dim: int, seed: int = 0, scales=None) -> np.ndarray:
    """I + U, U Gaussian of Frobenius norm about ``scales`` (default 1) per matrix."""
    rng = np.random.default_rng(seed)
    scales = np.ones(count) if scales is None else np.asarray(scales, dtype=np.float64)
    return np.eye(dim) + rng.normal(size=(count, dim, dim)) / dim * scales[:, None, None]


def _canonical(values: np.ndarray) -> np.ndarray:
    """Eigenvalues in an order independent of the solver (for comparison)."""
    return values[np.lexsort((np.round(values.imag, 9), np.round(values.real, 9)))]


def _entropy_rank(singular: np.ndarray) -> float:
    p = singular / singular.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


# --------------------------------------------------------------------------- per matrix


def test_matrix_spectra_against_numpy_loops():
    matrices = _random_matrices(4, 9, scales=[0.5, 3.0, 9.0, 1.0])
    got = {key: value.numpy() for key, value in matrix_spectra(torch.as_tensor(matrices)).items()}
    for index, matrix in enumerate(matrices):
        for prefix, operator in (("", matrix), ("update_", matrix - np.eye(9))):
            eigenvalues = np.linalg.eigvals(operator)
            singular = np.linalg.svd(operator, compute_uv=False)
            frobenius = np.sqrt((operator**2).sum())
            if not prefix:
                mine = got["eigenvalues"][index]
                np.testing.assert_allclose(_canonical(mine), _canonical(eigenvalues), rtol=1e-10, atol=1e-12)
                assert np.all(np.diff(np.abs(mine)) <= 1e-12)
            expected = {
                "spectral_radius": np.abs(eigenvalues).max(),
                "rotation_index": np.abs(eigenvalues.imag).sum() / np.abs(eigenvalues).sum(),
                "henrici": np.sqrt(max(frobenius**2 - (np.abs(eigenvalues) ** 2).sum(), 0)) / frobenius,
                "antisymmetric_share": np.sqrt((((operator - operator.T) / 2) ** 2).sum()) / frobenius,
                "frobenius_norm": frobenius,
                "effective_rank_pr": (singular**2).sum() ** 2 / (singular**4).sum(),
            }
            for key, value in expected.items():
                np.testing.assert_allclose(got[prefix + key][index], value, rtol=1e-9, err_msg=prefix + key)


def test_participation_ratio_without_svd_matches_the_singular_values():
    """||A||_F^4 / ||A^T A||_F^2 = (sum s^2)^2 / sum s^4; the rescaling keeps huge and tiny matrices finite."""
    matrices = _random_matrices(3, 12, seed=4) * np.array([1e-150, 1.0, 1e150])[:, None, None]
    got = matrix_participation_ratio(torch.as_tensor(matrices)).numpy()
    for value, matrix in zip(got, matrices):
        singular = np.linalg.svd(matrix / np.abs(matrix).max(), compute_uv=False)
        np.testing.assert_allclose(value, (singular**2).sum() ** 2 / (singular**4).sum(), rtol=1e-12)
    assert float(matrix_participation_ratio(torch.zeros(1, 3, 3))[0]) == 0.0


def test_henrici_zero_for_symmetric_positive_for_jordan_block():
    rng = np.random.default_rng(1)
    half = rng.normal(size=(12, 12))
    symmetric = torch.as_tensor(half + half.T)
    jordan = torch.as_tensor(np.eye(4) + np.eye(4, k=1))  # J_4(1): ||J||_F^2 = 7, sum |lambda|^2 = 4
    got = matrix_spectra(torch.stack([symmetric, torch.block_diag(jordan, torch.eye(8, dtype=torch.float64))]))
    floor = np.sqrt(12 * EPS64) * 10  # cancellation in ||J||_F^2 - sum |lambda|^2
    assert float(got["henrici"][0]) < floor
    assert float(got["antisymmetric_share"][0]) == 0.0
    assert float(got["rotation_index"][0]) == 0.0
    np.testing.assert_allclose(float(got["henrici"][1]), np.sqrt(3 / 15), rtol=1e-12)  # (12 - 1) + 4 ones on the diagonal


def test_rotation_index_of_a_rotation_and_ranks_of_zero():
    angle = 0.3
    rotation = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    got = matrix_spectra(torch.stack([rotation, torch.eye(2, dtype=torch.float64)]))
    np.testing.assert_allclose(float(got["rotation_index"][0]), np.sin(angle), rtol=1e-12)
    np.testing.assert_allclose(float(got["antisymmetric_share"][0]), np.sin(angle) / 1.0, rtol=1e-12)
    assert float(got["update_effective_rank_pr"][1]) == 0.0  # the update of the identity is zero
    assert float(got["update_frobenius_norm"][1]) == 0.0
    assert float(entropy_effective_rank(torch.zeros(1, 3))[0]) == 0.0


# --------------------------------------------------------------------------- cumulative product


def test_cumulative_spectrum_against_the_direct_product():
    matrices = _random_matrices(5, 6, seed=2, scales=[2.0, 8.0, 4.0, 12.0, 3.0]) * np.array([0.5, 2.0, 1.0, 3.0, 0.7])[:, None, None]
    depths = [1, 3, 4]
    got = {key: value.numpy() for key, value in cumulative_spectra(torch.as_tensor(matrices), depths).items()}
    assert got["cumulative_log_singular_values"].shape == (3, 6) and got["cumulative_effective_rank_pr"].shape == (3,)
    product, log_det = np.eye(6), 0.0
    for step, matrix in enumerate(matrices):
        product = matrix @ product
        log_det += np.log(abs(np.linalg.det(matrix)))
        if step not in depths:
            continue
        row = depths.index(step)
        singular = np.linalg.svd(product, compute_uv=False)
        np.testing.assert_allclose(got["cumulative_log_singular_values"][row], np.log(singular), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(got["cumulative_effective_rank_pr"][row], (singular**2).sum() ** 2 / (singular**4).sum(), rtol=1e-10)
        np.testing.assert_allclose(got["cumulative_effective_rank_entropy"][row], _entropy_rank(singular), rtol=1e-10)
        np.testing.assert_allclose(got["lyapunov"][row], np.log(singular) / (step + 1), rtol=1e-10, atol=1e-12)
        # every singular value is resolved here: the exponents sum to log |det| per transition
        np.testing.assert_allclose(got["lyapunov"][row].sum() * (step + 1), log_det, rtol=1e-10)


def test_lyapunov_exponents_of_diagonal_maps():
    diagonals = np.array([[2.0, 0.5, 1.0], [4.0, 0.5, 0.25]])
    got = cumulative_spectra(torch.as_tensor(np.stack([np.diag(d) for d in diagonals])))
    expected = np.sort(np.log(diagonals).sum(axis=0) / 2)[::-1]
    np.testing.assert_allclose(got["lyapunov"][-1].numpy(), expected, rtol=1e-12)


def test_cumulative_spectrum_survives_overflowing_products():
    """The direct product overflows float64 (1e600); the rescaled product keeps its largest
    singular values exactly and the rest below eps of the largest."""
    matrices = np.stack([np.diag([1e30, 1e29, 1.0])] * 20)
    got = cumulative_spectra(torch.as_tensor(matrices))
    log_singular = got["cumulative_log_singular_values"][-1].numpy()
    np.testing.assert_allclose(log_singular[:2], 20 * np.log([1e30, 1e29]), rtol=1e-12)
    assert log_singular[2] < log_singular[0] + np.log(EPS64)  # unresolved, but below eps of the largest
    np.testing.assert_allclose(got["lyapunov"][-1].numpy()[:2], np.log([1e30, 1e29]), rtol=1e-12)
    assert 1.0 <= float(got["cumulative_effective_rank_pr"][-1]) < 1.1


def test_product_chain_steps_one_factor_at_a_time():
    matrices = torch.as_tensor(_random_matrices(4, 5, seed=7, scales=[3.0] * 4))
    chain = ProductChain()
    for matrix in matrices:
        chain.step(matrix)
    assert chain.depth == 4
    direct = matrices[3] @ matrices[2] @ matrices[1] @ matrices[0]
    torch.testing.assert_close(chain.product * torch.exp(chain.log_scale), direct, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- float32 against float64


def test_float32_spectra_agree_with_float64():
    """The rule's default spectra dtype. On updates the size of the default model's (||U||_F
    from 1 to 20 at D = 128) and a 40-fold product: the judged quantities agree with float64
    to 1e-4 relative (rotation index, Henrici, antisymmetric share, participation ratios,
    the product's entropy rank) and the top Lyapunov exponent to 1e-4 absolute. Measured on
    the default model's own Jacobians (D = 576, 60 transitions): about 1e-6."""
    matrices = _random_matrices(40, 128, seed=5, scales=np.geomspace(20, 1, 40))
    double = torch.as_tensor(matrices)
    single = double.to(torch.float32)
    spectra64, spectra32 = matrix_spectra(double), matrix_spectra(single)
    for key in ("rotation_index", "henrici", "antisymmetric_share", "effective_rank_pr", "update_rotation_index",
                "update_henrici", "update_antisymmetric_share", "update_effective_rank_pr", "update_frobenius_norm"):
        np.testing.assert_allclose(spectra32[key].double().numpy(), spectra64[key].numpy(), rtol=1e-4, err_msg=key)
    depths = range(1, 40, 2)
    product64, product32 = cumulative_spectra(double, depths), cumulative_spectra(single, depths)
    for key in ("cumulative_effective_rank_entropy", "cumulative_effective_rank_pr"):
        np.testing.assert_allclose(product32[key].double().numpy(), product64[key].numpy(), rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(product32["lyapunov"][:, 0].double().numpy(), product64["lyapunov"][:, 0].numpy(), atol=1e-4)


# --------------------------------------------------------------------------- surrogates


def test_haar_orthogonal_is_orthogonal_seeded_and_unbiased():
    first = haar_orthogonal(16, generator(3), shape=(200,))
    torch.testing.assert_close(first @ first.mT, torch.eye(16, dtype=torch.float64).expand(200, 16, 16), atol=1e-12, rtol=0)
    torch.testing.assert_close(first, haar_orthogonal(16, generator(3), shape=(200,)))
    # Haar: every entry has mean 0 and variance 1/D; the positive-R convention removes the sign bias of plain QR
    entries = first.reshape(200, -1).numpy()
    assert np.abs(entries.mean(axis=0)).max() < 5 * np.sqrt(1 / 16 / 200)
    np.testing.assert_allclose(entries.var(), 1 / 16, rtol=0.05)
    np.testing.assert_allclose(np.diagonal(first.numpy(), axis1=1, axis2=2).mean(), 0, atol=5 * np.sqrt(1 / 16 / 3200))


def test_svd_matched_keeps_the_singular_values_and_changes_the_singular_vectors():
    rng = np.random.default_rng(0)
    update = torch.as_tensor(rng.normal(size=(40, 40)) * np.geomspace(10, 0.01, 40))  # condition number ~1e3
    left, singular, right_t = torch.linalg.svd(update)
    surrogate = svd_matched(singular, generator(1))
    new_left, new_singular, new_right_t = torch.linalg.svd(surrogate)
    np.testing.assert_allclose(new_singular.numpy(), singular.numpy(), rtol=1e-6)
    # the singular vectors are new: no direction of the surrogate's aligns with the update's
    # (for random unit vectors in 40 dimensions, |cos| > 0.9 has probability ~1e-15)
    assert float((left.T @ new_left).abs().max()) < 0.9 and float((right_t @ new_right_t.T).abs().max()) < 0.9
    assert not torch.allclose(surrogate, update)


def test_norm_matched_keeps_the_frobenius_norm():
    norms = torch.tensor([0.5, 7.0, 19.4], dtype=torch.float64)
    surrogate = norm_matched(norms, 30, generator(2))
    np.testing.assert_allclose(surrogate.square().sum(dim=(-2, -1)).sqrt().numpy(), norms.numpy(), rtol=1e-12)
    # Gaussian entries: mean 0, equal variance
    entries = (surrogate / norms[:, None, None] * 30).reshape(3, -1).numpy()
    np.testing.assert_allclose(entries.var(axis=1), 1.0, rtol=0.1)


@pytest.mark.parametrize("kind", SURROGATES)
def test_surrogate_seeds_are_distinct_and_stable(kind):
    seeds = {surrogate_seed(0, row, kind, draw) for row in range(20) for draw in range(3)}
    assert len(seeds) == 60 and all(0 <= seed < 2**63 for seed in seeds)
    assert surrogate_seed(0, 5, kind, 1) == surrogate_seed(0, 5, kind, 1)
    assert surrogate_seed(0, 5, kind, 1) != surrogate_seed(1, 5, kind, 1)
