"""The batched torch unit statistics (issue 19.2, ``unit_stats.device: cuda``) run here
on the CPU against the NumPy/numba references of the CPU path.

Tolerances: R is a sum of n - 2 wrapped angle changes divided by 2 pi; the two paths
sum them in another order (the numba kernel telescopes them) and, for the phase null,
build the surrogates with another FFT, so each turn carries a few ulp of pi times the
conditioning of atan2 at the step (steps here are O(0.1) to O(1)): |dR| < 1e-9 is
orders of magnitude above that and far below the 1 a flipped wrap would give. A
correlation is a sum of N products of standardised values (|z| <= 1): its round-off
is below N eps = 5e-14 for N = 200; a pair's histogram bin can only differ when its r
lies within that of a bin edge, which the tests check does not happen on their data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsdyn.units import batched, correlations, rotations
from rsdyn.units import unit_stats as us

CPU = torch.device("cpu")
R_TOL = 1e-9
CORR_TOL = 1e-12


@pytest.fixture(scope="module")
def acts() -> np.ndarray:
    return us.synthetic_activations(200, 8, 12, seed=4).astype(np.float64)


def test_correlations_match_the_numpy_forms(acts):
    consecutive, pairs = batched.correlations(acts, 20, CPU)
    np.testing.assert_allclose(consecutive, correlations.corr_consecutive(acts), rtol=0, atol=CORR_TOL)
    matrix = correlations.corr_matrix(acts)
    values = matrix[:, *np.triu_indices(matrix.shape[1], k=1)]
    edges = np.linspace(0, 1, 21)
    assert np.abs(values[..., None] - edges).min() > 1e-9, "a correlation sits on a bin edge: pick other data"
    np.testing.assert_array_equal(pairs, correlations.corr_pairs_hist(acts, 20))


def test_a_constant_unit_gives_nan_correlations_on_both_paths(acts):
    flat = acts.copy()
    flat[:, 3, 5] = 7.0
    consecutive, pairs = batched.correlations(flat, 10, CPU)
    reference = correlations.corr_consecutive(flat)
    np.testing.assert_array_equal(np.isnan(consecutive), np.isnan(reference))
    assert np.isnan(consecutive[2:4, 5]).all()
    np.testing.assert_allclose(pairs, correlations.corr_pairs_hist(flat, 10), rtol=0, atol=0)


def test_histogram_fractions_treat_edges_one_nan_and_outliers_as_numpy():
    edges = np.linspace(0.0, 1.0, 6)
    values = np.array([[*edges, np.nan, -0.1, 1.1, 0.33, 1.0 - 1e-17, np.nextafter(1.0, 2.0)]])
    got = batched.histogram_fractions(torch.from_numpy(values), 5).numpy()
    np.testing.assert_array_equal(got, correlations.histogram_fractions(values, 5))


@pytest.mark.parametrize("n_sublayers", [2, 3, 17, 64])
def test_rotation_number_matches_the_numba_kernel_and_the_numpy_definition(n_sublayers):
    trajectories = np.random.default_rng(n_sublayers).normal(size=(300, n_sublayers)).cumsum(axis=1)
    got = batched.observed_rotations(trajectories, CPU)
    np.testing.assert_allclose(got, rotations.rotation_number(trajectories), rtol=0, atol=R_TOL)
    np.testing.assert_allclose(got, rotations.tangent_turns(*rotations.phase_portrait(trajectories)), rtol=0, atol=R_TOL)


@pytest.mark.parametrize("null", ["layer_shuffle", "point_shuffle", "increment_shuffle", "phase", "circular"])
@pytest.mark.parametrize("n_sublayers", [16, 17])
def test_every_null_matches_the_cpu_kernels_draw_for_draw(null, n_sublayers):
    rng = np.random.default_rng(7)
    trajectories = (rng.normal(size=(9, n_sublayers)).cumsum(axis=1)
                    + np.sin(np.linspace(0, 6, n_sublayers)) * rng.uniform(1, 3, size=(9, 1)))
    expected = rotations.null_rotations(trajectories, null, 41, seed=3)
    got = batched.null_rotations(trajectories, null, 41, seed=3, device=CPU)
    assert got.shape == expected.shape == (41, 9)
    np.testing.assert_allclose(got, expected, rtol=0, atol=R_TOL)
    in_runs = batched.null_rotations(trajectories, null, 41, seed=3, device=CPU, max_elements=5 * 9 * n_sublayers)
    np.testing.assert_allclose(in_runs, got, rtol=0, atol=R_TOL)


def test_the_rotation_stage_gives_the_cpu_numbers_with_batched_kernels(acts):
    expected = rotations.rotations(acts, n_shuffles=60, surrogate="phase", seed=2, per_sample=True, per_sample_shuffles=8)
    got = rotations.rotations(acts, n_shuffles=60, surrogate="phase", seed=2, per_sample=True, per_sample_shuffles=8,
                              kernels=batched.rotation_kernels(CPU))
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        tolerance = 1e-6 if value.dtype == np.float32 else R_TOL  # the samples are stored as float32
        np.testing.assert_allclose(got[name], value, rtol=0, atol=tolerance, err_msg=name)


def test_unit_block_stats_batched_equals_the_cpu_path(acts):
    settings = {"device": "cpu", "n_shuffles": 40, "per_sample": True, "per_sample_shuffles": 6, "surrogate": "circular"}
    cpu_timings, batched_timings = {}, {}
    expected = us.unit_block_stats(acts, settings, cpu_timings)
    got = us.unit_block_stats(acts, settings, batched_timings, batched=True)
    assert sorted(got) == sorted(expected)
    assert "corr_pairs_hist" in cpu_timings and "correlations" in batched_timings  # each path ran its own kernels
    for name, value in expected.items():
        if name == "corr_pairs_hist":
            np.testing.assert_array_equal(got[name], value)
            continue
        tolerance = 1e-6 if value.dtype == np.float32 else R_TOL
        np.testing.assert_allclose(got[name], value, rtol=0, atol=tolerance, err_msg=name, equal_nan=True)
