"""Tensor-maximum-entropy surrogates: the fit against a slow optimiser of the dual, the
surrogates' marginal covariances against the data's, the sample-mean shortcut, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from rsdyn.core.errors import PopulationInputError
from rsdyn.population import tme


def structured_tensor(shape=(12, 10, 14), seed=0) -> np.ndarray:
    """A tensor with different covariance along each mode, marginal means and a non-separable part."""
    rng = np.random.default_rng(seed)
    mixes = [np.linalg.qr(rng.standard_normal((n, n)))[0] * np.exp(-np.arange(n) / (n / 2)) for n in shape]
    core = rng.standard_normal(shape)
    tensor = np.einsum("ia,jb,kc,abc->ijk", *mixes, core)
    return tensor + rng.normal(0, 2, shape[0])[:, None, None] + np.linspace(0, 3, shape[1])[None, :, None] + rng.normal(0, 1, shape[2])


def kronecker_sum(model: tme.TMEModel) -> np.ndarray:
    l0, l1, l2 = model.multipliers
    return l0[:, None, None] + l1[None, :, None] + l2[None, None, :]


def test_marginal_means_are_the_authors_sequential_means():
    tensor = structured_tensor()
    means = tme.marginal_means(tensor)
    residual = tensor - (means[0][:, None, None] + means[1][None, :, None] + means[2][None, None, :])
    # what remains has zero mean over every pair of modes
    np.testing.assert_allclose(residual.mean(axis=(0, 1)), 0, atol=1e-12)
    np.testing.assert_allclose(residual.mean(axis=(1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(residual.mean(axis=(0, 2)), 0, atol=1e-12)


def test_marginal_covariances_against_loops():
    residual = np.random.default_rng(1).standard_normal((3, 4, 5))
    sigma0, sigma1, sigma2 = tme.marginal_covariances(residual)
    np.testing.assert_allclose(sigma0[1, 2], sum(residual[1, j, k] * residual[2, j, k] for j in range(4) for k in range(5)), rtol=1e-12)
    np.testing.assert_allclose(sigma1[0, 3], sum(residual[i, 0, k] * residual[i, 3, k] for i in range(3) for k in range(5)), rtol=1e-12)
    np.testing.assert_allclose(sigma2[4, 4], np.sum(residual[:, :, 4] ** 2), rtol=1e-12)


def test_fitted_distribution_has_the_data_marginal_covariances_in_expectation():
    tensor = structured_tensor()
    model = tme.fit_tme(tensor)
    assert model.constraint_error < 1e-8
    data = tme.marginal_covariances(tensor - model.mean)
    for expected, fitted in zip(data, tme.expected_marginal_covariances(model)):
        assert np.linalg.norm(fitted - expected) / np.linalg.norm(expected) < 1e-8


def test_fit_matches_a_general_optimiser_of_the_dual():
    tensor = structured_tensor((4, 5, 3), seed=2)
    model = tme.fit_tme(tensor)
    sizes = [len(v) for v in model.eigenvalues]
    s = np.concatenate(model.eigenvalues)

    def dual(log_lams):  # 2F of the module docstring, in log multipliers (positive by construction)
        lams = np.exp(log_lams)
        l0, l1, l2 = np.split(lams, np.cumsum(sizes)[:-1])
        x = l0[:, None, None] + l1[None, :, None] + l2[None, None, :]
        inverse = 1 / x
        gradient = np.concatenate([s[: sizes[0]] - inverse.sum(axis=(1, 2)),
                                   s[sizes[0]: sizes[0] + sizes[1]] - inverse.sum(axis=(0, 2)),
                                   s[sizes[0] + sizes[1]:] - inverse.sum(axis=(0, 1))])
        return -np.log(x).sum() + lams @ s, gradient * lams

    start = np.log(np.concatenate([np.full(n, np.prod(sizes) / n / (3 * np.mean(v))) for n, v in zip(sizes, model.eigenvalues)]))
    reference = minimize(dual, start, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 20000})
    l0, l1, l2 = np.split(np.exp(reference.x), np.cumsum(sizes)[:-1])
    expected = l0[:, None, None] + l1[None, :, None] + l2[None, None, :]  # the gauge-free quantity
    np.testing.assert_allclose(kronecker_sum(model), expected, rtol=1e-5)


def test_surrogates_match_the_marginal_covariances_and_the_mean():
    tensor = structured_tensor()
    model = tme.fit_tme(tensor)
    surrogates = tme.sample_tme(model, 400, seed=0)
    data = tme.marginal_covariances(tensor - model.mean)
    per_surrogate = [tme.marginal_covariances(surrogate - model.mean) for surrogate in surrogates]
    for mode in range(3):
        averaged = np.mean([covariances[mode] for covariances in per_surrogate], axis=0)
        # relative Frobenius error of the covariance averaged over surrogates (single surrogates
        # of so small a tensor scatter by tens of percent)
        assert np.linalg.norm(averaged - data[mode]) / np.linalg.norm(data[mode]) < 0.05, mode
    mean = surrogates.mean(axis=0)
    spread = surrogates.std(axis=0) / np.sqrt(len(surrogates))
    assert np.mean(np.abs(mean - model.mean) < 4 * spread) > 0.99


def test_surrogates_are_seeded():
    model = tme.fit_tme(structured_tensor())
    np.testing.assert_array_equal(tme.sample_tme(model, 3, seed=5), tme.sample_tme(model, 3, seed=5))
    assert not np.array_equal(tme.sample_tme(model, 3, seed=5), tme.sample_tme(model, 3, seed=6))
    assert not np.array_equal(tme.sample_tme(model, 3, seed=5), tme.sample_tme(model, 3, seed=5, stream=1))
    np.testing.assert_array_equal(tme.sample_tme_mode0_mean(model, 4, seed=1), tme.sample_tme_mode0_mean(model, 4, seed=1))


def test_mode0_mean_shortcut_has_the_exact_distribution_of_a_surrogate_mean():
    tensor = structured_tensor((6, 4, 5), seed=3)
    model = tme.fit_tme(tensor)
    U0, U1, U2 = model.eigenvectors
    # exact covariance of the full surrogate (vectorised i, j, k) and of its mode-0 mean
    basis = np.einsum("ia,jb,kc->ijkabc", U0, U1, U2).reshape(np.prod(model.shape), -1)
    full = basis @ np.diag(1 / kronecker_sum(model).ravel()) @ basis.T
    averaging = np.kron(np.full((1, model.shape[0]), 1 / model.shape[0]), np.eye(model.shape[1] * model.shape[2]))
    expected = averaging @ full @ averaging.T
    draws = tme.sample_tme_mode0_mean(model, 20000, seed=0).reshape(20000, -1)
    empirical = np.cov(draws, rowvar=False)
    # sampling error of a covariance from 20000 draws: ~ sqrt(2 / 20000) = 1 % of its scale
    assert np.linalg.norm(empirical - expected) / np.linalg.norm(expected) < 0.05
    np.testing.assert_allclose(draws.mean(axis=0), model.mean.mean(axis=0).ravel(), atol=5 * np.sqrt(np.diag(expected).max() / 20000))


def test_constant_tensor_is_refused():
    with pytest.raises(PopulationInputError, match="do not vary"):
        tme.fit_tme(np.ones((3, 4, 5)))


def test_surrogate_chunks_and_factors_are_the_same_draws():
    model = tme.fit_tme(structured_tensor())
    whole = tme.sample_tme(model, 7, seed=2, stream=1)
    chunked = np.concatenate(list(tme.sample_tme_chunks(model, 7, seed=2, stream=1, chunk=3)))
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12 * np.abs(whole).max())
    gradient = np.gradient(np.eye(model.shape[1]), axis=0)
    (W, Wd), = tme.sample_tme_factors(model, 7, seed=2, stream=1, chunk=7, mode1=gradient)
    U0 = model.eigenvectors[0]
    np.testing.assert_allclose(model.mean + np.einsum("ia,majk->mijk", U0, W), whole, atol=1e-12 * np.abs(whole).max())
    np.testing.assert_allclose(np.gradient(model.mean, axis=1) + np.einsum("ia,majk->mijk", U0, Wd), np.gradient(whole, axis=2),
                               atol=1e-12 * np.abs(whole).max())
