"""PCA of pooled residual-stream states against numpy.linalg.svd and explicit loops."""

import numpy as np
import pytest

from rsdyn.core.linalg import choose_solver, fit_pca, project
from rsdyn.core.store import read_group, write_group
from rsdyn.geometry.pca import components_needed, ev_per_sublayer_curve
from rsdyn.geometry.run import pca_arrays, pca_attrs


def low_rank_matrix(n_rows, n_features, seed=0):
    """Rows with a well-separated spectrum (so components are unique up to sign) and an offset."""
    rng = np.random.default_rng(seed)
    rank = min(n_rows, n_features)
    basis, _ = np.linalg.qr(rng.standard_normal((n_features, rank)))
    scores = rng.standard_normal((n_rows, rank)) * np.geomspace(20, 0.05, rank)
    return (scores @ basis.T + rng.normal(3, 1, n_features)).astype(np.float32)


def reference_pca(X, k):
    """Plain numpy.linalg.svd of the centred float64 matrix, with the module's sign rule."""
    centred = X.astype(np.float64) - X.astype(np.float64).mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:k]
    for row in vt:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    return singular[:k], vt, singular[:k] ** 2 / np.sum(singular**2)


@pytest.mark.parametrize("shape", [(400, 30), (30, 400), (120, 90)])
@pytest.mark.parametrize("solver", ["full", "gram", "randomized"])
def test_fit_pca_matches_numpy_svd(shape, solver):
    X = low_rank_matrix(*shape)
    k = 8
    singular, components, ratio = reference_pca(X, k)
    fit = fit_pca(X, k, solver)
    assert fit["solver"] == solver
    np.testing.assert_allclose(fit["mean"], X.astype(np.float64).mean(axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fit["singular_values"], singular, rtol=1e-7)
    np.testing.assert_allclose(fit["components"], components, atol=1e-6)
    np.testing.assert_allclose(fit["explained_variance_ratio"], ratio, rtol=1e-7)
    np.testing.assert_allclose(fit["explained_variance"], singular**2 / (shape[0] - 1), rtol=1e-7)


def test_auto_solver_follows_the_shape():
    assert choose_solver(40_000, 576, 100) == "gram"
    assert choose_solver(50, 4096, 10) == "gram"
    assert choose_solver(300, 200, 10) == "full"
    assert choose_solver(8000, 6000, 100) == "randomized"
    assert choose_solver(8000, 6000, 100, "full") == "full"
    X = low_rank_matrix(400, 30)
    assert fit_pca(X, 5)["solver"] == "gram"


def test_projection_and_per_sublayer_ev_match_explicit_reconstruction():
    rng = np.random.default_rng(1)
    n, sublayers, d = 25, 6, 12
    states = low_rank_matrix(n * sublayers, d, seed=2).reshape(n, sublayers, d)
    states += rng.normal(0, 2, (1, sublayers, d)).astype(np.float32)  # sublayer means differ
    fit = fit_pca(states.reshape(-1, d), 10, "full")
    curve = ev_per_sublayer_curve(states, fit["mean"], fit["components"])
    assert curve.shape == (sublayers, 10)
    for s in range(sublayers):
        block = states[:, s].astype(np.float64)
        for k in (1, 4, 10):
            v = fit["components"][:k]
            recon = fit["mean"] + (block - fit["mean"]) @ v.T @ v
            expected = 1 - np.sum((block - recon) ** 2) / np.sum((block - block.mean(axis=0)) ** 2)
            assert curve[s, k - 1] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    scores = project(states, fit["mean"], fit["components"][:2])
    for i in range(n):
        for s in range(sublayers):
            expected = [np.dot(states[i, s] - fit["mean"], fit["components"][c]) for c in range(2)]
            np.testing.assert_allclose(scores[i, s], expected, rtol=1e-9, atol=1e-9)


def test_components_needed_matches_a_loop():
    rng = np.random.default_rng(3)
    curve = np.cumsum(rng.uniform(0, 0.1, (7, 20)), axis=1)
    got = components_needed(curve, 0.7)
    for s in range(7):
        hits = [k + 1 for k in range(20) if curve[s, k] >= 0.7]
        assert got[s] == (hits[0] if hits else -1)


def make_store(path, n=20, n_layers=3, d=16, seed=0):
    rng = np.random.default_rng(seed)
    states = low_rank_matrix(n * 2 * n_layers, d, seed).reshape(n, 2 * n_layers, d)
    states += np.cumsum(rng.normal(0, 1, (1, 2 * n_layers, d)), axis=1).astype(np.float32)
    write_group(
        path,
        {"original": states, "shuffled": states[::-1].copy()},
        attrs={"model_name": "synthetic", "n_layers": n_layers, "d_model": d, "sublayer_names": [f"S{s}" for s in range(2 * n_layers)]},
    )
    return states


def test_run_pca_on_a_store(tmp_path):
    store = tmp_path / "activations.zarr"
    states = make_store(store)
    settings = {"n_components": 10, "solver": "auto", "condition": "original", "variance_threshold": 0.9}
    arrays = pca_arrays(store, settings)
    assert arrays["projection"].shape == (20, 6, 2)
    assert arrays["components"].shape == (10, 16)
    assert arrays["ev_per_sublayer"].shape == (6,)
    np.testing.assert_allclose(arrays["ev_per_sublayer"], arrays["ev_per_sublayer_curve"][:, -1])
    expected = components_needed(arrays["ev_per_sublayer_curve"], 0.9)
    np.testing.assert_array_equal(arrays["n_components_90"], expected)
    reference = fit_pca(states.reshape(-1, 16), 10, "full")
    np.testing.assert_allclose(arrays["explained_variance_ratio"], reference["explained_variance_ratio"], rtol=1e-5)
    write_group(tmp_path / "pca.zarr", arrays, attrs=pca_attrs(store, settings))
    back = read_group(tmp_path / "pca.zarr")
    np.testing.assert_array_equal(back["projection"], arrays["projection"])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"n_components": 500, "solver": "auto", "condition": "original"}, "n_components"),
        ({"n_components": 5, "solver": "qr", "condition": "original"}, "solver"),
        ({"n_components": 5, "solver": "auto", "condition": "other"}, "no 'other' array"),
        ({"n_components": 5, "solver": "auto", "condition": "original", "variance_threshold": 1.5}, "variance_threshold"),
    ],
)
def test_bad_settings_raise_before_compute(tmp_path, settings, message):
    store = tmp_path / "activations.zarr"
    make_store(store)
    with pytest.raises(ValueError, match=message):
        pca_arrays(store, settings)


def test_bad_matrix_raises():
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(np.full((5, 3), np.nan), 2)
    with pytest.raises(ValueError, match="2-D"):
        fit_pca(np.zeros((5, 3, 2)), 2)


def fake_pca_arrays(n_sublayers=8, k=10, n_resamples=50, seed=0, late_smaller=True):
    """pca.zarr-like arrays whose late sublayers need fewer components (or more, flipped)."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n_sublayers) if late_smaller else np.linspace(1, 0, n_sublayers)
    curve = np.cumsum(np.full((n_sublayers, k), 0.1), axis=1) * (0.6 + 0.5 * depth)[:, None]
    pr = 20 - 15 * depth
    count = np.round(40 - 30 * depth).astype(np.int32)
    resampled = np.array([0, 1, 6, 7])
    return {
        "ev_per_sublayer_curve": curve,
        "explained_variance_ratio": np.full(k, 0.095),
        "ev_per_sublayer_bootstrap": curve[None, :, -1] + rng.normal(0, 0.01, (n_resamples, n_sublayers)),
        "n_components_90_bootstrap": np.tile(components_needed(curve, 0.9), (n_resamples, 1)),
        "participation_ratio": pr,
        "components_for_90_within": count,
        "rank_within": np.full(n_sublayers, 60),
        "bootstrap_sublayers": resampled,
        "participation_ratio_bootstrap": pr[resampled] + rng.normal(0, 0.5, (n_resamples, 4)),
        "components_for_90_within_bootstrap": count[resampled] + rng.integers(-1, 2, (n_resamples, 4)),
    }


def test_summary_rows_follow_their_definitions():
    from rsdyn.geometry.pca_summary import summary_fig4_pca

    arrays = fake_pca_arrays()
    curve = arrays["ev_per_sublayer_curve"]
    curve[:2] *= 0.5  # the first quarter never reaches 0.9 within K = 10
    curve[0] = np.nan  # a sublayer without variance is left out
    rows = summary_fig4_pca(arrays, 0.9)
    assert rows["pca_components_for_90pct_early"]["value"] == ">10"
    late = [next(k + 1 for k in range(10) if curve[s, k] >= 0.9) for s in (6, 7)]
    assert rows["pca_components_for_90pct_late"]["value"] == np.median(late)
    assert rows["pca_components_for_90pct_late_minus_early"]["value"] == pytest.approx(np.median(late) - 11)
    assert rows["pca_components_for_90pct_pooled"]["value"] == 10  # 10 * 0.095 = 0.95
    assert rows["pca_ev_per_sublayer_early"]["value"] == pytest.approx(curve[1, -1])
    assert rows["pca_ev_per_sublayer_late"]["value"] == pytest.approx(np.median(curve[6:, -1]))
    pr = arrays["participation_ratio"]
    assert rows["pca_participation_ratio_early"]["value"] == pytest.approx(np.median(pr[:2]))
    assert rows["pca_participation_ratio_late_minus_early"]["value"] == pytest.approx(np.median(pr[6:]) - np.median(pr[:2]))
    count = arrays["components_for_90_within"]
    assert rows["pca_components_for_90pct_within_late"]["value"] == pytest.approx(np.median(count[6:]))
    for name, row in rows.items():
        if name.endswith("_late_minus_early"):
            assert {"interval", "verdict", "resampled", "expected"} <= set(row)
            assert "sequences" in row["resampled"]
        else:
            assert set(row) == {"value", "paper", "definition"}
    for name in ("participation_ratio", "components_for_90pct_within", "ev_per_sublayer"):
        assert rows[f"pca_{name}_late_minus_early"]["verdict"] == "reproduced", name


def test_summary_verdicts_flip_with_the_direction():
    from rsdyn.geometry.pca_summary import summary_fig4_pca

    rows = summary_fig4_pca(fake_pca_arrays(late_smaller=False), 0.9)
    for name in ("participation_ratio", "components_for_90pct_within", "ev_per_sublayer"):
        assert rows[f"pca_{name}_late_minus_early"]["verdict"] == "opposite", name


def test_within_rows_quote_the_bootstrap_shift():
    """Resampling with replacement lowers every resampled dimensionality: the within rows
    keep the percentile interval and say how far the bootstrap mean lies from the estimate."""
    from rsdyn.core.verdicts import percentile_interval
    from rsdyn.geometry.pca_summary import summary_fig4_pca

    arrays = fake_pca_arrays(n_resamples=100)
    rng = np.random.default_rng(4)
    early_shrink = np.array([3.0, 3.0, 0.0, 0.0])  # the early sublayers (more dimensions) lose more
    arrays["components_for_90_within_bootstrap"] = (
        arrays["components_for_90_within"][arrays["bootstrap_sublayers"]] - early_shrink + rng.normal(0, 0.3, (100, 4))
    )
    row = summary_fig4_pca(arrays, 0.9)["pca_components_for_90pct_within_late_minus_early"]
    raw = arrays["components_for_90_within_bootstrap"]
    samples = np.median(raw[:, 2:], axis=1) - np.median(raw[:, :2], axis=1)
    np.testing.assert_allclose(row["interval"], percentile_interval(samples))
    assert row["interval"][1] > row["value"]  # shifted toward 0 from the (negative) estimate
    assert f"bootstrap mean {samples.mean():.4g} vs estimate {row['value']:.4g}" in row["resampled"]
    assert row["verdict"] == "reproduced"


def test_censored_pooled_counts_give_a_valid_verdict():
    """Early sublayers needing more than K pooled PCs count as K + 1: late - early is an
    upper bound, so a negative interval still means fewer components late."""
    from rsdyn.geometry.pca_summary import summary_fig4_pca

    arrays = fake_pca_arrays(n_resamples=20)
    curve = arrays["ev_per_sublayer_curve"]
    curve[:2] *= 0.5  # early: never 90 % within K
    counts = components_needed(curve, 0.9)
    arrays["n_components_90_bootstrap"] = np.tile(counts, (20, 1))
    row = summary_fig4_pca(arrays, 0.9)["pca_components_for_90pct_late_minus_early"]
    assert row["interval"][1] < 0 and row["verdict"] == "reproduced"
    arrays["ev_per_sublayer_curve"] = curve * 0.5  # nothing reaches 90 %: both censored, no difference shown
    arrays["n_components_90_bootstrap"] = np.full((20, 8), -1)
    assert summary_fig4_pca(arrays, 0.9)["pca_components_for_90pct_late_minus_early"]["verdict"] == "inconclusive"


# ------------------------------------------------------------------ within-sublayer PCA


def eigh_reference(block):
    """Eigenvalues of np.cov of the rows (ddof 1), descending, from np.linalg.eigh."""
    return np.linalg.eigh(np.cov(block.astype(np.float64), rowvar=False))[0][::-1]


def count_for_fraction_loop(eigenvalues, fraction):
    total, running = sum(eigenvalues), 0.0
    for k, value in enumerate(eigenvalues, start=1):
        running += value
        if running >= fraction * total:
            return k
    return len(eigenvalues)


def spectrum_tolerance(eigenvalues, n_rows, n_features):
    """Absolute error of eigenvalues from a Gram accumulated in float64: O(max(N, D) * eps * lambda_max)."""
    return 10 * max(n_rows, n_features) * np.finfo(np.float64).eps * float(np.max(eigenvalues))


@pytest.mark.parametrize("n, d", [(15, 40), (60, 12)])  # N < D (N x N Gram) and N > D (D x D)
def test_within_view_matches_eigh_per_sublayer(n, d):
    from rsdyn.geometry.pca import pca_of_states

    rng = np.random.default_rng(5)
    sublayers = 4
    states = (rng.standard_normal((n, sublayers, d)) * rng.gamma(1.0, 1.0, (1, sublayers, d)) + 5).astype(np.float32)
    arrays = pca_of_states(states, 3, n_resamples=0)
    assert arrays["spectrum_within"].shape == (sublayers, min(n, d))
    for s in range(sublayers):
        reference = eigh_reference(states[:, s])
        width = min(n, d)
        np.testing.assert_allclose(arrays["spectrum_within"][s], np.clip(reference[:width], 0, None),
                                   rtol=1e-6, atol=spectrum_tolerance(reference, n, d))  # stored as float32
        positive = np.clip(reference, 0, None)
        assert arrays["participation_ratio"][s] == pytest.approx(positive.sum() ** 2 / np.sum(positive**2), rel=1e-6)
        assert arrays["components_for_90_within"][s] == count_for_fraction_loop(positive, 0.9)
        assert arrays["rank_within"][s] == min(n - 1, d)  # random data: full rank after centring


def test_within_view_of_low_rank_and_constant_sublayers():
    from rsdyn.geometry.sublayer_pca import (
        components_for_fraction,
        numerical_rank,
        own_spectrum,
        participation_ratio,
    )

    rng = np.random.default_rng(6)
    low_rank = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 20))  # rank 3
    spectrum = own_spectrum(low_rank)
    assert numerical_rank(spectrum, 30, 20) == 3
    assert components_for_fraction(spectrum, 0.999) <= 3
    assert 1 <= participation_ratio(spectrum) <= 3
    equal_axes = np.concatenate([np.eye(4), -np.eye(4)]) * 2.0  # isotropic in 4 dimensions
    assert participation_ratio(own_spectrum(equal_axes)) == pytest.approx(4.0, rel=1e-12)
    constant = own_spectrum(np.ones((5, 7)))
    assert np.isnan(participation_ratio(constant)) and components_for_fraction(constant, 0.9) == -1


@pytest.mark.parametrize("n, d", [(20, 30), (25, 8)])  # indexed N x N Gram route, and D x D weighted covariance (N > 2D)
def test_resampled_spectra_equal_the_spectrum_of_the_repeated_rows(n, d):
    from rsdyn.core.verdicts import bootstrap_indices
    from rsdyn.geometry.sublayer_pca import resample_counts, resampled_spectra

    rng = np.random.default_rng(7)
    block = rng.standard_normal((n, d)) * rng.gamma(1.0, 1.0, d) + 3
    indices = bootstrap_indices(n, 6, seed=1)
    spectra = resampled_spectra(block, resample_counts(indices, n))
    for b, rows in enumerate(indices):
        reference = np.clip(eigh_reference(block[rows]), 0, None)
        width = min(n, d)
        np.testing.assert_allclose(spectra[b], reference[:width], rtol=0, atol=spectrum_tolerance(reference, n, d))


def test_pooled_bootstrap_equals_the_curve_of_the_resampled_sequences():
    """Per resample, the pooled-PC R^2 with PCs and pooled mean held fixed equals the
    explicit reconstruction on the resampled sequences."""
    from rsdyn.core.verdicts import bootstrap_indices
    from rsdyn.geometry.pca import pca_of_states

    rng = np.random.default_rng(8)
    n, sublayers, d, k = 18, 5, 10, 4
    states = low_rank_matrix(n * sublayers, d, seed=3).reshape(n, sublayers, d)
    states += rng.normal(0, 2, (1, sublayers, d)).astype(np.float32)
    arrays = pca_of_states(states, k, n_resamples=5, seed=2)
    mean, components = arrays["mean"].astype(np.float64), arrays["components"].astype(np.float64)
    for b, rows in enumerate(bootstrap_indices(n, 5, seed=2)):
        for s in range(sublayers):
            block = states[rows, s].astype(np.float64)
            recon = mean + (block - mean) @ components.T @ components
            expected = 1 - np.sum((block - recon) ** 2) / np.sum((block - block.mean(axis=0)) ** 2)
            assert arrays["ev_per_sublayer_bootstrap"][b, s] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    resampled = arrays["bootstrap_sublayers"]
    np.testing.assert_array_equal(resampled, [0, 1, 3, 4])  # ceil(5 / 4) = 2 first and last
    assert arrays["participation_ratio_bootstrap"].shape == (5, 4)


class CountingArray:
    """An (N, 2L, D) array that records the size of every read."""

    def __init__(self, data, chunks=None):
        self.data, self.shape, self.reads = data, data.shape, []
        if chunks:
            self.chunks = chunks

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(out.size)
        return out


def test_streamed_pca_reads_in_blocks_and_matches_the_in_memory_fit(monkeypatch):
    import rsdyn.core.linalg as linalg_module
    import rsdyn.geometry.pca as pca_module

    rng = np.random.default_rng(9)
    n, sublayers, d = 40, 6, 8
    states = (rng.standard_normal((n, sublayers, d)) * np.geomspace(10, 0.1, d) + 2).astype(np.float32)
    monkeypatch.setattr(linalg_module, "_BLOCK_BYTES", 4 * 7 * sublayers * d)  # 7 sequences, or 1 sublayer, per read
    array = CountingArray(states, chunks=(5, sublayers, d))
    streamed = pca_module.pca_of_states(array, 5, "gram", n_resamples=3)
    assert max(array.reads) <= 10 * sublayers * d  # sample blocks aligned to the 5-sequence chunks
    assert sum(array.reads) <= 3 * states.size  # mean, Gram and per-sublayer passes
    in_memory = fit_pca(states.reshape(-1, d), 5, "gram")
    np.testing.assert_allclose(streamed["explained_variance_ratio"], in_memory["explained_variance_ratio"], rtol=1e-6)
    np.testing.assert_allclose(np.abs(streamed["components"]), np.abs(in_memory["components"]), atol=1e-5)
    reference = pca_module.pca_of_states(states, 5, "gram", n_resamples=3)
    for name in ("projection", "ev_per_sublayer_curve", "participation_ratio", "ev_per_sublayer_bootstrap"):
        np.testing.assert_allclose(streamed[name], reference[name], rtol=1e-5, atol=1e-5)


def test_pca_panels_draw_into_given_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsdyn.geometry.pca_figure import draw_pca_panels

    store = tmp_path / "activations.zarr"
    make_store(store)
    arrays = pca_arrays(store, {"n_components": 10, "solver": "auto", "condition": "original"}, n_resamples=0)
    figure, axes = plt.subplots(1, 4)
    draw_pca_panels(axes, arrays, [f"S{s}" for s in range(6)])
    assert len(axes[0].lines) == 20 + 1  # every trajectory and the mean
    pooled = next(line for line in axes[1].lines if line.get_label() == "pooled")
    np.testing.assert_allclose(pooled.get_ydata(), np.cumsum(arrays["explained_variance_ratio"]))
    assert len(axes[1].lines) == 6 + 2  # one curve per sublayer's own spectrum, the pooled one, the threshold
    bold = next(line for line in axes[2].lines if line.get_label() == "10 PCs")
    np.testing.assert_allclose(bold.get_ydata(), arrays["ev_per_sublayer"])  # not clipped
    assert axes[2].get_ylim()[0] <= np.nanmin(arrays["ev_per_sublayer_curve"])
    own = next(line for line in axes[3].lines if line.get_label().startswith("own PCs"))
    np.testing.assert_allclose(own.get_ydata(), arrays["components_for_90_within"])
    ratio = next(line for line in axes[3].lines if line.get_label() == "participation ratio")
    np.testing.assert_allclose(ratio.get_ydata(), arrays["participation_ratio"])
    figure.savefig(tmp_path / "panels.png")
    plt.close(figure)
