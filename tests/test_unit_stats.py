"""Per-unit kernels against their slow references; shards, gather and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import digamma
from scipy.stats import gaussian_kde

from rsdyn.core.store import read_group, write_group
from rsdyn.core.threads import torch_threads
from rsdyn.units import correlations, mi, rotations, surrogates
from rsdyn.units import unit_stats as us
from rsdyn.units.settings import split_units

SMALL = {"n_shuffles": 20, "corr_bins": 10, "ksg_k": 3}


def correlated_pairs(rng, n_rows: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs with correlations from -0.99 to 0.999, heavy tails, scales and offsets far from 1."""
    r = np.linspace(-0.99, 0.999, n_rows)[:, None]
    x = rng.standard_normal((n_rows, n_points))
    y = r * x + np.sqrt(1 - r**2) * rng.standard_t(3, (n_rows, n_points))
    x = x * rng.uniform(0.01, 30, (n_rows, 1)) + rng.uniform(-50, 50, (n_rows, 1))
    y = y * rng.uniform(0.01, 30, (n_rows, 1)) + rng.uniform(-50, 50, (n_rows, 1))
    return x, y


def mi_kde_scipy(x: np.ndarray, y: np.ndarray, eps: float = 1e-10) -> float:
    """The paper's estimator with scipy, one pair at a time."""
    joint = np.vstack([x, y])
    p_xy = gaussian_kde(joint)(joint)
    return float(np.mean(np.log((p_xy + eps) / (gaussian_kde(x)(x) * gaussian_kde(y)(y) + eps))))


def mi_ksg_loop(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """KSG estimator 1, brute force, one point at a time."""
    x, y = x / x.std(), y / y.std()
    n = len(x)
    n_x, n_y = np.empty(n), np.empty(n)
    for i in range(n):
        dx, dy = np.abs(x - x[i]), np.abs(y - y[i])
        distance = np.maximum(dx, dy)
        distance[i] = np.inf
        radius = np.sort(distance)[k - 1]
        n_x[i], n_y[i] = np.sum(dx < radius) - 1, np.sum(dy < radius) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1)) - np.mean(digamma(n_y + 1)))


def rotation_loop(trajectory: np.ndarray) -> float:
    """PAPER.md Fig. 2, written out with a Python loop."""
    a = np.asarray(trajectory, dtype=float)
    n = len(a)
    g = [a[1] - a[0]] + [(a[l + 1] - a[l - 1]) / 2 for l in range(1, n - 1)] + [a[n - 1] - a[n - 2]]
    x = [a[l] - a[0] for l in range(n)]
    y = [g[l] - g[0] for l in range(n)]
    angles = [np.arctan2(y[l + 1] - y[l], x[l + 1] - x[l]) for l in range(n - 1)]
    total = 0.0
    for l in range(len(angles) - 1):
        change = angles[l + 1] - angles[l]
        while change >= np.pi:
            change -= 2 * np.pi
        while change < -np.pi:
            change += 2 * np.pi
        total += change
    return total / (2 * np.pi)


@pytest.fixture
def acts():
    return us.synthetic_activations(48, 4, 7, seed=3).astype(np.float64)


# ----------------------------------------------------------------------------- shards


def test_split_units_tiles_every_unit_once():
    for n_units, shards in [(576, 4), (576, 7), (10, 10), (13, 1)]:
        ranges = split_units(n_units, shards)
        assert len(ranges) == shards
        covered = np.concatenate([np.arange(start, stop) for start, stop in ranges])
        assert np.array_equal(covered, np.arange(n_units))
        sizes = [stop - start for start, stop in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_more_shards_than_units_is_a_clear_error():
    with pytest.raises(us.UnitStatsInputError, match="shards = 8 exceeds the number of units d_model = 5"):
        split_units(5, 8)


# ----------------------------------------------------------------------------- correlation


def test_corr_consecutive_matches_corrcoef(acts):
    expected = np.array([[np.corrcoef(acts[:, l, u], acts[:, l + 1, u])[0, 1] for u in range(acts.shape[2])]
                         for l in range(acts.shape[1] - 1)])
    np.testing.assert_allclose(correlations.corr_consecutive(acts), expected, rtol=0, atol=1e-12)


def test_corr_pairs_hist_matches_corrcoef_and_histogram(acts):
    bins = 10
    expected = []
    for u in range(acts.shape[2]):
        matrix = np.corrcoef(acts[:, :, u].T)
        r = matrix[np.triu_indices(acts.shape[1], k=1)]
        expected.append(np.histogram(r, bins=bins, range=(0, 1))[0] / len(r))
    np.testing.assert_allclose(correlations.corr_pairs_hist(acts, bins), np.array(expected), atol=1e-12)


def test_histogram_fractions_edges_like_numpy():
    values = np.array([[0.0, 0.1, 0.2, 0.5, 0.9999, 1.0, -0.3, 0.3, 0.7, 0.6]])
    expected = np.histogram(values[0], bins=5, range=(0, 1))[0] / values.shape[1]
    np.testing.assert_array_equal(correlations.histogram_fractions(values, 5), expected[None])


def test_mi_gaussian_is_the_bivariate_normal_mi():
    r = np.array([0.0, 0.5, -0.9, 0.999])
    np.testing.assert_allclose(mi.mi_gaussian(r), [-0.5 * np.log(1 - v * v) for v in r], rtol=1e-14)


# ----------------------------------------------------------------------------- KDE MI


KDE_BACKENDS = ["torch"] + (["numba"] if mi.numba is not None else [])


@pytest.fixture(params=KDE_BACKENDS)
def kde_backend(request, monkeypatch):
    """Runs the test with each CPU backend of the float32 kernel sums."""
    monkeypatch.setattr(mi, "KDE_CPU_BACKEND", request.param)
    return request.param


def discrete_and_outlier_pairs(rng, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with many tied values, far outliers, a Cauchy pair and r = 0.999."""
    x = np.vstack([rng.integers(0, 5, n_points), rng.standard_normal(n_points), rng.standard_cauchy(n_points),
                   rng.standard_normal(n_points)]).astype(float)
    x[1, :8] = 400.0
    y = np.vstack([x[0] + rng.integers(0, 2, n_points), x[1] + 0.1 * rng.standard_normal(n_points),
                   x[2] + 0.05 * rng.standard_cauchy(n_points),
                   0.999 * x[3] + np.sqrt(1 - 0.999**2) * rng.standard_normal(n_points)])
    return x, y


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_mi_kde_pairs_matches_scipy(precision, kde_backend):
    rng = np.random.default_rng(0)
    x, y = correlated_pairs(rng, 12, 300)
    extra_x, extra_y = discrete_and_outlier_pairs(rng, 300)
    x, y = np.vstack([x, extra_x]), np.vstack([y, extra_y])
    expected = np.array([mi_kde_scipy(x[i], y[i]) for i in range(len(x))])
    got = mi.mi_kde_pairs(x, y, precision=precision)
    if precision == "float32":
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    else:
        tolerance = float64_kde_tolerance(x, y, expected)
        error = np.abs(got - expected)
        assert (error <= tolerance).all(), f"rows {np.flatnonzero(error > tolerance)}: error {error} > {tolerance}"


def float64_kde_tolerance(x: np.ndarray, y: np.ndarray, mi: np.ndarray) -> np.ndarray:
    """Per row, the rounding error two float64 evaluations of the KDE MI may differ by.

    Each density is a sum of N kernel terms, so it carries a relative error of up to
    N eps (summation in another order than scipy's). The kernel exponents come from the
    inverse of the joint covariance, which amplifies the rounding of the covariance by
    its condition number kappa (large for r near +-1 and heavy tails). The log of the
    ratio turns relative errors into absolute ones, so the MI (a mean of logs) may
    differ by about N eps kappa, and scales with |MI| through the exponents. A factor 4
    covers the three densities and the bandwidth.
    """
    n_points = x.shape[1]
    kappa = np.array([np.linalg.cond(np.cov(x[i], y[i])) for i in range(len(x))])
    return 4.0 * n_points * np.finfo(np.float64).eps * kappa * np.maximum(1.0, np.abs(mi))


@pytest.mark.skipif(mi.numba is None, reason="numba is not installed")
def test_numba_exp_matches_numpy():
    t = np.concatenate([np.linspace(-87.0, 0.0, 4001), -np.logspace(-8, 1, 500), [0.0, -0.0]]).astype(np.float32)
    got = np.array([mi._exp_nonpositive_f32(value) for value in t], dtype=np.float64)
    expected = np.exp(t.astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=3.5e-7, atol=0)
    np.testing.assert_allclose(got[t >= -20], expected[t >= -20], rtol=1.5e-7, atol=0)


@pytest.mark.skipif(mi.numba is None, reason="numba is not installed")
@pytest.mark.parametrize("n_dims", [1, 2])
@pytest.mark.parametrize("n_points", [3, 301])
def test_numba_kernel_sums_match_float64_loop(n_dims, n_points):
    rng = np.random.default_rng(12)
    # 301 points: several row blocks (64), column chunks (256) and padding to a multiple of 4
    points = (rng.standard_t(3, (4, n_points, n_dims)) * 3).astype(np.float32)
    points[1, : n_points // 2] = points[1, 0]  # ties
    expected = np.empty((4, n_points))
    for row in range(4):
        p = points[row].astype(np.float64)
        expected[row] = [np.exp(-((p - p[i]) ** 2).sum(axis=1)).sum() for i in range(n_points)]
    got = mi._numba_kernel_sums(points, workers=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(mi._numba_kernel_sums(points, workers=3), got)


@pytest.mark.parametrize("threads", [1, 2])
def test_mi_kde_of_a_unit_does_not_depend_on_its_batch(kde_backend, threads):
    acts = us.synthetic_activations(150, 3, 5, seed=13).astype(np.float64)
    with torch_threads(1):
        alone = np.hstack([mi.mi_kde(acts[:, :, [unit]]) for unit in range(5)])
    with torch_threads(threads):
        together = mi.mi_kde(acts)
    np.testing.assert_array_equal(together, alone)


def test_mi_kde_consecutive_shares_marginals_and_matches_scipy(acts):
    expected = np.array([[mi_kde_scipy(acts[:, l, u], acts[:, l + 1, u]) for u in range(acts.shape[2])]
                         for l in range(acts.shape[1] - 1)])
    np.testing.assert_allclose(mi.mi_kde(acts), expected, rtol=0, atol=1e-6)


def test_kde_densities_match_scipy_at_the_samples():
    rng = np.random.default_rng(1)
    x, y = correlated_pairs(rng, 3, 200)
    for i in range(3):
        np.testing.assert_allclose(mi.kde_marginal_density(x[i : i + 1], precision="float64")[0],
                                   gaussian_kde(x[i])(x[i]), rtol=1e-12)
        joint = np.vstack([x[i], y[i]])
        np.testing.assert_allclose(mi.kde_joint_density(x[i : i + 1], y[i : i + 1], precision="float64")[0],
                                   gaussian_kde(joint)(joint), rtol=1e-12)


def test_mi_kde_of_constant_unit_is_nan():
    rng = np.random.default_rng(2)
    x = np.vstack([np.full(50, 3.0), rng.standard_normal(50)])
    y = rng.standard_normal((2, 50))
    values = mi.mi_kde_pairs(x, y)
    assert np.isnan(values[0]) and np.isfinite(values[1])


# ----------------------------------------------------------------------------- KSG MI


def test_mi_ksg_matches_brute_force_loop():
    rng = np.random.default_rng(4)
    x, y = correlated_pairs(rng, 10, 250)
    expected = np.array([mi_ksg_loop(x[i], y[i]) for i in range(len(x))])
    np.testing.assert_allclose(mi.mi_ksg_pairs(x, y, k=3), expected, rtol=0, atol=1e-12)


def test_mi_ksg_consecutive_and_other_k(acts):
    for k in (1, 4):
        expected = np.array([[mi_ksg_loop(acts[:, l, u], acts[:, l + 1, u], k) for u in range(acts.shape[2])]
                             for l in range(acts.shape[1] - 1)])
        np.testing.assert_allclose(mi.mi_ksg(acts, k=k), expected, rtol=0, atol=1e-12)


def test_mi_ksg_matches_sklearn():
    mutual_info = pytest.importorskip("sklearn.feature_selection._mutual_info")
    rng = np.random.default_rng(5)
    x, y = correlated_pairs(rng, 6, 300)
    x, y = x[3:], y[3:]  # positive correlations, where sklearn's clipping at 0 does not act
    x, y = x / x.std(axis=1, keepdims=True), y / y.std(axis=1, keepdims=True)
    expected = [mutual_info._compute_mi_cc(x[i], y[i], 3) for i in range(len(x))]
    np.testing.assert_allclose(mi.mi_ksg_pairs(x, y, k=3), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("window", [1, 2, 5, 299])
def test_kth_neighbour_distance_does_not_depend_on_window(window):
    import torch

    rng = np.random.default_rng(6)
    x, y = correlated_pairs(rng, 5, 300)
    xs_order = np.argsort(x, axis=1)
    xs = torch.from_numpy(np.take_along_axis(x, xs_order, 1))
    ys = torch.from_numpy(np.take_along_axis(y, xs_order, 1))
    expected = []
    for row in range(5):
        distance = np.maximum(np.abs(xs[row].numpy()[:, None] - xs[row].numpy()[None]),
                              np.abs(ys[row].numpy()[:, None] - ys[row].numpy()[None]))
        np.fill_diagonal(distance, np.inf)
        expected.append(np.sort(distance, axis=1)[:, 2])
    got = mi._kth_neighbour_distance(xs, ys, 3, window=window, check_every=3)
    np.testing.assert_array_equal(got.numpy(), np.array(expected))


def test_estimators_agree_on_a_gaussian_pair():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2000))
    y = 0.8 * x + 0.6 * rng.standard_normal((1, 2000))
    exact = -0.5 * np.log(1 - 0.8**2)
    assert abs(mi.mi_ksg_pairs(x, y)[0] - exact) < 0.05
    assert abs(mi.mi_kde_pairs(x, y)[0] - exact) < 0.1


# ----------------------------------------------------------------------------- rotations


def test_rotation_number_matches_python_loop():
    rng = np.random.default_rng(8)
    trajectories = rng.standard_normal((20, 17)).cumsum(axis=1)
    expected = [rotation_loop(t) for t in trajectories]
    np.testing.assert_allclose(rotations.rotation_number(trajectories), expected, rtol=0, atol=1e-12)


def test_tangent_turns_of_circles_traversed_n_times():
    t = np.linspace(0, 1, 2001)
    for turns in (1, 3, -2):
        x, y = np.cos(2 * np.pi * turns * t), np.sin(2 * np.pi * turns * t)
        # the tangent turns once per loop; first and last tangent are one step short of a full loop
        assert rotations.tangent_turns(x, y) == pytest.approx(turns * (1 - 1 / 2000), abs=1e-9)


def test_rotation_number_of_growing_oscillation_is_minus_its_cycles():
    # a_l = e^(0.01 l) cos(omega l): the portrait (a, da/dl) spirals outwards clockwise
    n_steps, cycles = 800, 6
    l = np.arange(n_steps)
    trajectory = np.exp(0.01 * l * 6 / cycles) * np.cos(2 * np.pi * cycles * l / n_steps)
    assert rotations.rotation_number(trajectory) == pytest.approx(-cycles, abs=0.05)


def test_layer_shuffle_null_matches_loop():
    rng = np.random.default_rng(9)
    acts = rng.standard_normal((5, 12, 3)).cumsum(axis=1)
    out = rotations.rotations(acts, n_shuffles=30, surrogate="circular", seed=4)
    mean_trajectory = acts.mean(axis=0)
    permutations = rotations.layer_permutations(12, 30, 4)
    for unit in range(3):
        null = np.array([rotation_loop(mean_trajectory[perm, unit]) for perm in permutations])
        observed = rotation_loop(mean_trajectory[:, unit])
        assert out["rotations"][unit] == pytest.approx(observed, abs=1e-12)
        assert out["rotations_layer_shuffle_mean"][unit] == pytest.approx(null.mean(), abs=1e-12)
        assert out["rotations_layer_shuffle_std"][unit] == pytest.approx(null.std(ddof=1), abs=1e-12)
        expected_percentile = 100 * (np.sum(null < observed) + 0.5 * np.sum(null == observed)) / 30
        assert out["rotations_layer_shuffle_percentile"][unit] == pytest.approx(expected_percentile)


def test_permutations_are_permutations_and_seeded():
    permutations = rotations.layer_permutations(10, 50, 1)
    assert np.array_equal(np.sort(permutations, axis=1), np.tile(np.arange(10), (50, 1)))
    assert np.array_equal(permutations, rotations.layer_permutations(10, 50, 1))
    assert not np.array_equal(permutations, rotations.layer_permutations(10, 50, 2))


def test_phase_surrogates_keep_trend_and_spectrum():
    rng = np.random.default_rng(10)
    trajectory = rng.standard_normal((4, 16)).cumsum(axis=1)
    draws = surrogates.surrogate_trajectories(trajectory, "phase", 25, seed=0)
    np.testing.assert_allclose(draws.mean(axis=2), trajectory.mean(axis=1, keepdims=True).repeat(25, 1), atol=1e-12)
    assert not np.allclose(draws[:, 0], trajectory)
    ramp = np.linspace(0, 1, 16)
    line = trajectory[:, :1] + (trajectory[:, -1:] - trajectory[:, :1]) * ramp
    amplitude = np.abs(np.fft.rfft(trajectory - line))
    surrogate_amplitude = np.abs(np.fft.rfft(draws - line[:, None]))
    np.testing.assert_allclose(surrogate_amplitude, np.broadcast_to(amplitude[:, None], surrogate_amplitude.shape), atol=1e-9)


def test_circular_surrogates_are_rotations_of_the_sequence():
    trajectory = np.arange(24, dtype=float).reshape(2, 12)
    draws = surrogates.surrogate_trajectories(trajectory, "circular", 7, seed=0)
    for unit in range(2):
        for draw in draws[unit]:
            shift = int(draw[0] - trajectory[unit, 0])
            assert 1 <= shift < 12
            assert np.array_equal(draw, np.roll(trajectory[unit], -shift))


def test_per_sample_rotations_are_the_mean_over_samples(acts):
    out = rotations.rotations(acts, n_shuffles=5, per_sample=True)
    expected = [np.mean([rotation_loop(acts[n, :, u]) for n in range(acts.shape[0])]) for u in range(acts.shape[2])]
    np.testing.assert_allclose(out["rotations_per_sample_mean"], expected, atol=1e-12)


# ----------------------------------------------------------------------------- shard, gather


def _gathered(store, tmp_path, shards: int) -> dict:
    n_units = read_group(store)["original"].shape[2]
    paths = []
    for index, (start, stop) in enumerate(split_units(n_units, shards)):
        result = us.compute_shard(store, start, stop, {**SMALL, "shards": shards})
        attrs = us.shard_attrs(store, start, stop, {**SMALL, "shards": shards})
        paths.append(write_group(tmp_path / f"S{shards}" / f"shard_{index}.zarr", result, attrs=attrs))
    arrays, attrs = us.gather(paths)
    out = write_group(tmp_path / f"unit_stats_S{shards}.zarr", arrays, attrs=attrs)
    return read_group(out)


def _assert_identical(a: dict, b: dict, prefix: str = "") -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            _assert_identical(a[name], b[name], f"{prefix}{name}/")
        else:
            assert np.array_equal(a[name], b[name], equal_nan=True), f"{prefix}{name} differs"


def test_gathered_store_is_identical_for_1_and_7_shards(tmp_path):
    # 150 samples: the KDE kernel matrix spans several blocks (block 128)
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 150, 3, 19, unit_chunk=4)
    one, seven = _gathered(store, tmp_path, 1), _gathered(store, tmp_path, 7)
    _assert_identical(one, seven)
    names = {"corr_consecutive", "corr_pairs_hist", "mi_kde", "mi_ksg", "mi_gaussian", "rotations",
             "rotations_layer_shuffle_mean", "rotations_layer_shuffle_std", "rotations_layer_shuffle_percentile",
             "rotations_point_shuffle_fdr", "rotations_phase_pvalue"}
    assert names <= set(one["original"]) and names <= set(one["shuffled"])
    assert one["original"]["corr_consecutive"].shape == (5, 19)
    assert one["original"]["corr_pairs_hist"].shape == (19, 10)
    assert one["original"]["rotations"].shape == (19,)


def test_shard_reads_only_its_units_and_matches_the_kernels(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 30, 3, 9, unit_chunk=3)
    result = us.compute_shard(store, 3, 6, SMALL)
    acts = read_group(store)["original"][:, :, 3:6].astype(np.float64)
    np.testing.assert_array_equal(result["units"], [3, 4, 5])
    np.testing.assert_allclose(result["original"]["corr_consecutive"], correlations.corr_consecutive(acts), atol=1e-14)
    np.testing.assert_allclose(result["original"]["mi_kde"], mi.mi_kde(acts), atol=1e-12)


def test_gather_refuses_a_missing_shard(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 20, 2, 6, unit_chunk=2)
    paths = []
    for index, (start, stop) in enumerate(split_units(6, 3)):
        if index == 1:
            continue
        paths.append(write_group(tmp_path / f"shard_{index}.zarr", us.compute_shard(store, start, stop, SMALL),
                                 attrs=us.shard_attrs(store, start, stop, SMALL)))
    with pytest.raises(us.UnitStatsInputError, match="unit 2 was expected"):
        us.gather(paths)


def test_too_few_samples_is_a_clear_error_and_nothing_is_written(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 2, 2, 4, unit_chunk=2)
    out = tmp_path / "shard_0.zarr"
    with pytest.raises(us.UnitStatsInputError, match=r"\(units 0-3\) has 2 samples; unit_stats needs at least 3"):
        write_group(out, us.compute_shard(store, 0, 4, SMALL))
    assert not out.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_activations_name_the_unit_range_and_nothing_is_written(tmp_path, bad):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 10, 2, 8, unit_chunk=2)
    import zarr

    array = zarr.open_group(str(store), mode="r+")["shuffled"]
    array[3, 1, 6] = bad
    out = tmp_path / "shard_1.zarr"
    with pytest.raises(us.UnitStatsInputError, match=r"'shuffled' has NaN or inf values in units 4-7 .*unit 6, sublayer 1, sample 3"):
        write_group(out, us.compute_shard(store, 4, 8, SMALL))
    assert not out.exists()
    us.compute_shard(store, 0, 4, SMALL)  # the other shard is clean


def test_unusable_settings_are_refused_before_reading(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 10, 2, 4, unit_chunk=2)
    with pytest.raises(us.UnitStatsInputError, match="unit_stats.surrogate = 'fourier'; allowed values are 'phase', 'circular'"):
        us.compute_shard(store, 0, 4, {**SMALL, "surrogate": "fourier"})
    with pytest.raises(us.UnitStatsInputError, match="unit_stats.n_shuffles = 0; it must be at least 1"):
        us.compute_shard(store, 0, 4, {**SMALL, "n_shuffles": 0})
