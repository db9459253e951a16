"""jPCA: the constrained least squares against an explicit slow solution, linear systems
with known dynamics, planes, windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm

from rsdyn.core.errors import PopulationInputError
from rsdyn.population import jpca
from rsdyn.population.settings import default_windows, resolve_windows


def skew_basis(k: int) -> np.ndarray:
    """(k(k-1)/2, k, k): E_ij - E_ji for i < j."""
    basis = []
    for i in range(k):
        for j in range(i + 1, k):
            element = np.zeros((k, k))
            element[i, j], element[j, i] = 1.0, -1.0
            basis.append(element)
    return np.asarray(basis)


def skew_lstsq_slow(X: np.ndarray, Xdot: np.ndarray) -> np.ndarray:
    """min ||Xdot - X M|| over skew M, as one big least-squares problem in the k(k-1)/2 coefficients."""
    basis = skew_basis(X.shape[1])
    design = np.stack([(X @ element).ravel() for element in basis], axis=1)
    coefficients = np.linalg.lstsq(design, Xdot.ravel(), rcond=None)[0]
    return np.einsum("p,pij->ij", coefficients, basis)


def random_skew(rng, k: int) -> np.ndarray:
    A = rng.standard_normal((k, k))
    return A - A.T


@pytest.mark.parametrize("k", [2, 5, 6])
def test_skew_least_squares_matches_the_explicit_solution(k):
    rng = np.random.default_rng(k)
    X = rng.standard_normal((300, k)) * rng.uniform(0.1, 30, k)
    Xdot = X @ rng.standard_normal((k, k)) + rng.standard_normal((300, k))
    got, expected = jpca.skew_least_squares(X, Xdot), skew_lstsq_slow(X, Xdot)
    # both solve the same k(k-1)/2 normal equations; error ~ cond(X)^2 eps relative to M
    tolerance = np.linalg.cond(X) ** 2 * 1e-15 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(got, -got.T)


def test_fit_recovers_a_known_skew_symmetric_system_and_its_frequencies():
    rng = np.random.default_rng(0)
    M = random_skew(rng, 6)
    X = rng.standard_normal((500, 6))
    X -= X.mean(axis=0)
    fit = jpca.fit_dynamics(X, X @ M)
    np.testing.assert_allclose(fit["m_skew"], M, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fit["m_best"], M, rtol=0, atol=1e-8)
    assert fit["jpca_ratio"] == pytest.approx(1.0, abs=1e-12)
    frequencies, planes = jpca.rotation_planes(fit["m_skew"])
    expected = np.sort(np.abs(np.linalg.eigvals(M).imag))[::-1][::2]
    np.testing.assert_allclose(frequencies, expected, rtol=1e-10)
    for omega, plane in zip(frequencies, planes):
        np.testing.assert_allclose(plane.T @ plane, np.eye(2), atol=1e-12)
        # in the plane's coordinates the column dynamics x' = M^T x is a counter-clockwise rotation
        np.testing.assert_allclose(plane.T @ M.T @ plane, [[0, -omega], [omega, 0]], atol=1e-10)


def test_a_purely_expanding_system_has_a_small_ratio():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    symmetric = Q @ np.diag(rng.uniform(0.02, 0.1, 6)) @ Q.T
    steps = np.stack([expm(symmetric * l) for l in range(40)])  # x_l = expm(S l) x_0
    states = np.einsum("sij,nj->nsi", steps, rng.standard_normal((150, 6)))  # (N, S, 6)
    result = jpca.jpca(states, k=6)
    assert result["jpca_ratio"] < 0.05
    assert result["r2_best"] > 0.9


def test_a_rotating_system_is_found_with_its_frequency():
    rng = np.random.default_rng(2)
    theta = 2 * np.pi / 25  # one turn every 25 sublayers in plane 1, slower in plane 2
    generator = np.zeros((6, 6))
    generator[0, 1], generator[2, 3] = theta, theta / 3
    generator -= generator.T
    steps = np.stack([expm(generator * l) for l in range(100)])  # (S, 6, 6)
    mixing, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    start = rng.standard_normal((80, 6)) * [1, 1, 1, 1, 0.1, 0.1]  # the two static dimensions small
    states = np.einsum("sij,nj->nsi", steps, start)  # (N, S, 6)
    states = np.concatenate([states, 1e-3 * rng.standard_normal(states.shape[:2] + (14,))], axis=2) @ mixing.T
    result = jpca.jpca(states, k=4)
    assert result["jpca_ratio"] > 0.99
    # the central difference of a rotation by theta per step turns at sin(theta) per step
    np.testing.assert_allclose(result["frequencies"], [np.sin(theta), np.sin(theta / 3)], rtol=0.02)
    assert result["projection"].shape == (80, 100, 2)


def test_ratio_and_frequencies_do_not_depend_on_the_basis_of_the_states():
    rng = np.random.default_rng(3)
    states = rng.standard_normal((40, 12, 8)).cumsum(axis=1)
    rotation, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a, b = jpca.jpca(states, k=4), jpca.jpca(states @ rotation.T, k=4)
    assert a["jpca_ratio"] == pytest.approx(b["jpca_ratio"], rel=1e-9)
    np.testing.assert_allclose(a["frequencies"], b["frequencies"], rtol=1e-9)


def test_literal_r2_differs_by_the_drift_only():
    rng = np.random.default_rng(4)
    states = rng.standard_normal((30, 15, 6)) + np.linspace(0, 20, 15)[None, :, None] * rng.standard_normal(6)
    scores, _ = jpca.pc_scores(states, 4)
    Xdot = np.gradient(scores, axis=1).reshape(-1, 4)
    result = jpca.jpca_of_scores(scores)
    drift = len(Xdot) * np.sum(Xdot.mean(axis=0) ** 2) / np.sum((Xdot - Xdot.mean(axis=0)) ** 2)
    assert result["r2_best"] - result["r2_best_literal"] == pytest.approx(drift, rel=1e-9)
    assert result["r2_skew"] - result["r2_skew_literal"] == pytest.approx(drift, rel=1e-9)


def test_windows():
    assert default_windows(60) == [[0, 15], [15, 30], [30, 45], [45, 60]]
    assert default_windows(7) == [[0, 4], [4, 7]]
    assert resolve_windows(None, 60) == default_windows(60)
    assert resolve_windows([[0, 3], [10, 60]], 60) == [[0, 3], [10, 60]]
    for bad in ([[0, 2]], [[5, 61]], [[-1, 4]], [[9, 4]]):
        with pytest.raises(PopulationInputError, match="jpca.windows"):
            resolve_windows(bad, 60)


def test_k_out_of_range_is_refused():
    with pytest.raises(PopulationInputError, match="jpca.k = 9"):
        jpca.jpca(np.random.default_rng(0).standard_normal((5, 4, 8)), k=9)


def test_config_checks_jpca_windows_and_k():
    from pathlib import Path

    import yaml

    from rsdyn.config import resolve_runs
    from rsdyn.core.schema import ConfigError

    def config(**sections):
        base = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/smoke.yaml").read_text())
        base.update(sections)
        return base

    assert resolve_runs(config())["smoke"]["jpca"] == {"k": 6, "windows": None, "normalize": "soft"}
    with pytest.raises(ConfigError, match=r"jpca.windows has \[50, 61\].*<= 60"):
        resolve_runs(config(jpca={"windows": [[0, 10], [50, 61]]}))
    with pytest.raises(ConfigError, match="jpca.k = 600 exceeds"):
        resolve_runs(config(jpca={"k": 600}))
    with pytest.raises(ConfigError, match="tme.n_surrogates"):
        resolve_runs(config(tme={"n_surrogates": 0}))
