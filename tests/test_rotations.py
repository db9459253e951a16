"""Per-unit nulls of the rotation number R: kernels against NumPy references, the
nulls on trajectories with known answers, p-values and Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from rsdyn.units import rotations as rot
from rsdyn.units import unit_stats as us


def spiral(turns: float, n: int = 600, growth: float = 0.004) -> np.ndarray:
    """a_l = e^(growth l) sin(2 pi turns l / n): its portrait spirals outwards ``turns`` times,
    clockwise. Starting at a zero crossing puts the first tangent along the portrait's long
    axis; a start at a peak is mid-turn and loses part of a turn."""
    l = np.arange(n)
    return np.exp(growth * l) * np.sin(2 * np.pi * turns * l / n)


# ----------------------------------------------------------------------------- kernels vs NumPy


def test_kernels_match_the_numpy_definition_for_every_permutation_null():
    rng = np.random.default_rng(0)
    trajectories = rng.standard_normal((7, 23)).cumsum(axis=1) * rng.uniform(0.1, 50, (7, 1))
    n_draws = 40
    # R itself: the fused kernel against tangent_turns(phase_portrait(a)) in NumPy
    reference = rot.tangent_turns(*rot.phase_portrait(trajectories))
    np.testing.assert_allclose(rot.rotation_number(trajectories), reference, rtol=0, atol=1e-12)
    # layer shuffle: a[perm]
    index = rot.null_draws("layer_shuffle", 23, n_draws, 3)
    expected = rot.tangent_turns(*rot.phase_portrait(trajectories[:, index])).T
    np.testing.assert_allclose(rot.null_rotations(trajectories, "layer_shuffle", n_draws, 3), expected, rtol=0, atol=1e-12)
    # point shuffle: the portrait's points permuted after the gradient
    index = rot.null_draws("point_shuffle", 23, n_draws, 3)
    x, y = rot.phase_portrait(trajectories)
    expected = rot.tangent_turns(x[:, index], y[:, index]).T
    np.testing.assert_allclose(rot.null_rotations(trajectories, "point_shuffle", n_draws, 3), expected, rtol=0, atol=1e-12)
    # increment shuffle: a_0 + cumsum of the increments in random order
    index = rot.null_draws("increment_shuffle", 23, n_draws, 3)
    steps = np.diff(trajectories, axis=1)[:, index]  # (U, K, n - 1)
    walks = np.concatenate([np.zeros(steps.shape[:2] + (1,)), np.cumsum(steps, axis=2)], axis=2) + trajectories[:, None, :1]
    expected = rot.tangent_turns(*rot.phase_portrait(walks)).T
    np.testing.assert_allclose(rot.null_rotations(trajectories, "increment_shuffle", n_draws, 3), expected, rtol=0, atol=1e-12)


def test_phase_null_is_R_of_the_phase_surrogates():
    rng = np.random.default_rng(1)
    trajectories = rng.standard_normal((5, 18)).cumsum(axis=1)
    surrogates = rot.surrogate_trajectories(trajectories, "phase", 30, seed=2)
    expected = rot.tangent_turns(*rot.phase_portrait(surrogates)).T
    np.testing.assert_allclose(rot.null_rotations(trajectories, "phase", 30, 2), expected, rtol=0, atol=1e-12)


def test_draws_are_seeded_and_prefixes_of_longer_requests():
    for null in rot.PERMUTATION_NULLS:
        draws = rot.null_draws(null, 12, 50, 1)
        length = 11 if null == "increment_shuffle" else 12
        assert np.array_equal(np.sort(draws, axis=1), np.tile(np.arange(length), (50, 1)))
        assert np.array_equal(draws, rot.null_draws(null, 12, 50, 1))
        assert np.array_equal(draws[:10], rot.null_draws(null, 12, 10, 1))
        if null == "point_shuffle":  # reversed pairs
            assert np.array_equal(draws[1::2], draws[0::2, ::-1])
        assert not np.array_equal(draws, rot.null_draws(null, 12, 50, 2))
    trajectories = np.random.default_rng(2).standard_normal((3, 12))
    long = rot.surrogate_trajectories(trajectories, "phase", 50, 4)
    np.testing.assert_array_equal(long[:, :7], rot.surrogate_trajectories(trajectories, "phase", 7, 4))


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("turns", [3, 10])
def test_spiral_has_its_winding_number(turns):
    # the portrait of a growing cosine winds clockwise once per cycle
    assert rot.rotation_number(spiral(turns)) == pytest.approx(-turns, abs=0.05)


@pytest.mark.parametrize(
    "name, trajectory",
    [
        ("spiral", spiral(10, n=64, growth=0.02)),
        ("white noise", np.random.default_rng(3).standard_normal(64)),
        ("random walk", np.random.default_rng(4).standard_normal(64).cumsum()),
    ],
)
def test_point_shuffle_null_has_mean_zero(name, trajectory):
    # reversing a path flips the sign of R and a permutation is as likely as its reverse
    draws = rot.null_rotations(trajectory[None, :], "point_shuffle", 2000, seed=0)[:, 0]
    assert abs(draws.mean()) < 0.05, name
    assert draws.std() > 1.0, name  # the null is wide: its mean, not its spread, is ~0
    # the symmetry behind it, on independent permutations of the portrait's points
    x, y = rot.phase_portrait(trajectory)
    permutations = np.argsort(np.random.default_rng(1).random((200, len(trajectory))), axis=1)
    forward = rot.tangent_turns(x[permutations], y[permutations])
    backward = rot.tangent_turns(x[permutations[:, ::-1]], y[permutations[:, ::-1]])
    # exactly antiparallel consecutive tangents (a change of exactly pi) wrap to -pi both
    # ways: the only exception, a whole turn, and rare
    exception = np.abs(backward + forward) > 1e-9
    assert exception.mean() < 0.02
    np.testing.assert_allclose(np.abs(backward + forward)[exception], 1.0, atol=1e-9)


def test_increment_shuffle_null_of_a_random_walk_contains_its_R():
    rng = np.random.default_rng(5)
    walks = rng.standard_normal((200, 64)).cumsum(axis=1)
    out = rot.rotations(walks.T[None].repeat(3, axis=0), n_shuffles=400, seed=0)  # the sample mean is the walk itself
    inside = (out["rotations_increment_shuffle_q025"] <= out["rotations"]) & (out["rotations"] <= out["rotations_increment_shuffle_q975"])
    # a random walk is its own increment-shuffle null: ~95 % inside, binomial s.d. 1.5 %
    assert inside.mean() > 0.9
    assert rot.bh_significant(out["rotations_increment_shuffle_pvalue"]).mean() < 0.05


def test_a_smooth_spiral_is_beyond_the_increment_and_phase_nulls_of_its_own_steps():
    trajectory = spiral(10, n=120, growth=0.01)
    out = rot.rotations(np.tile(trajectory[None, :, None], (3, 1, 1)), n_shuffles=500, seed=0)
    assert out["rotations"][0] == pytest.approx(-10, abs=0.1)
    for null in ("increment_shuffle", "layer_shuffle"):
        # shuffling a smooth oscillation's steps gives a rough path with many more turns: p small
        assert out[f"rotations_{null}_pvalue"][0] < 0.01, null


# ----------------------------------------------------------------------------- p-values and FDR


def test_two_sided_pvalue_against_a_loop():
    rng = np.random.default_rng(6)
    null = rng.integers(-3, 4, size=(50, 9)).astype(float)  # ties on purpose
    observed = rng.integers(-5, 6, size=9).astype(float)
    expected = [
        min(1.0, 2 * min(1 + np.sum(null[:, u] <= observed[u]), 1 + np.sum(null[:, u] >= observed[u])) / 51)
        for u in range(9)
    ]
    np.testing.assert_allclose(rot.two_sided_pvalue(observed, null), expected, rtol=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(0, 0.002, 40 * seed)])
    p[rng.integers(0, len(p), 10)] = 0.05  # ties at the threshold
    for q in (0.01, 0.05, 0.2):
        np.testing.assert_array_equal(rot.bh_significant(p, q), false_discovery_control(p, method="bh") <= q)


def test_benjamini_hochberg_ignores_nan_and_handles_nothing_significant():
    p = np.array([0.001, np.nan, 0.9, 0.02])
    expected = false_discovery_control(p[~np.isnan(p)], method="bh") <= 0.05
    np.testing.assert_array_equal(rot.bh_significant(p)[~np.isnan(p)], expected)
    assert not rot.bh_significant(p)[1]
    assert not rot.bh_significant(np.full(5, 0.9)).any()
    assert not rot.bh_significant(np.array([])).any()


# ----------------------------------------------------------------------------- the unit_stats arrays


def test_rotations_store_every_null_with_its_summary():
    acts = us.synthetic_activations(20, 4, 5, seed=1).astype(np.float64)
    out = rot.rotations(acts, n_shuffles=30, surrogate="phase", seed=2, per_sample=True, per_sample_shuffles=7)
    for prefix, n_draws in (("rotations", 30), ("rotations_per_sample", 7)):
        for null in rot.null_names("phase"):
            for name in ("mean", "std", "q025", "q975", "percentile", "pvalue"):
                assert out[f"{prefix}_{null}_{name}"].shape == (5,), (prefix, null, name)
            assert out[f"{prefix}_{null}_samples"].shape == (n_draws, 5)
    # the per-sample null: each draw applied to every sample, R averaged over samples
    perms = rot.null_draws("layer_shuffle", 8, 7, 2)
    expected = np.array([[rot.rotation_number(acts[:, perm, u]).mean() for u in range(5)] for perm in perms])
    np.testing.assert_allclose(out["rotations_per_sample_layer_shuffle_samples"], expected, rtol=1e-6)
    # seeded: the same call gives the same numbers
    again = rot.rotations(acts, n_shuffles=30, surrogate="phase", seed=2, per_sample=True, per_sample_shuffles=7)
    for name, value in out.items():
        np.testing.assert_array_equal(value, again[name])


def test_fdr_arrays_decide_over_all_units():
    stats = {"rotations_layer_shuffle_mean": np.zeros(4), "rotations_layer_shuffle_pvalue": np.array([0.001, 0.2, 0.01, 0.04])}
    fdr = rot.fdr_arrays(stats, 0.05)
    np.testing.assert_array_equal(fdr["rotations_layer_shuffle_fdr"], false_discovery_control(stats["rotations_layer_shuffle_pvalue"]) <= 0.05)
    assert rot.stored_nulls(stats) == ("layer_shuffle",)
