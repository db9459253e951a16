"""PCA of pooled residual-stream states against numpy.linalg.svd and explicit loops."""

import numpy as np
import pytest

from rsdyn.pca import (
    choose_solver,
    components_needed,
    ev_per_sublayer_curve,
    fit_pca,
    pca_attrs,
    project,
    run_pca,
)
from rsdyn.store import read_group, write_group


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
    arrays = run_pca(store, settings)
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
        run_pca(store, settings)


def test_bad_matrix_raises():
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(np.full((5, 3), np.nan), 2)
    with pytest.raises(ValueError, match="2-D"):
        fit_pca(np.zeros((5, 3, 2)), 2)


def test_summary_rows_follow_their_definitions():
    from rsdyn.pca import summary_fig4_pca

    curve = np.tile(np.linspace(0.2, 0.95, 10), (8, 1))  # (8 sublayers, K = 10)
    curve[:2] *= 0.5  # the first quarter never reaches 0.9
    curve[0] = np.nan  # a sublayer without variance is left out
    ratio = np.full(10, 0.095)
    rows = summary_fig4_pca({"ev_per_sublayer_curve": curve, "explained_variance_ratio": ratio}, 0.9)
    assert rows["pca_components_for_90pct_early"]["value"] == ">10"
    late = [next(k + 1 for k in range(10) if curve[s, k] >= 0.9) for s in (6, 7)]
    assert rows["pca_components_for_90pct_late"]["value"] == np.median(late)
    assert rows["pca_components_for_90pct_pooled"]["value"] == 10  # 10 * 0.095 = 0.95
    assert rows["pca_ev_per_sublayer_early"]["value"] == pytest.approx(curve[1, -1])
    assert rows["pca_ev_per_sublayer_late"]["value"] == pytest.approx(np.median(curve[6:, -1]))
    assert all(set(row) == {"value", "paper", "definition"} for row in rows.values())


def test_pca_panels_draw_into_given_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rsdyn.plots.pca_panels import draw_pca_panels

    store = tmp_path / "activations.zarr"
    make_store(store)
    arrays = run_pca(store, {"n_components": 10, "solver": "auto", "condition": "original"})
    figure, axes = plt.subplots(1, 3)
    draw_pca_panels(axes, arrays, [f"S{s}" for s in range(6)])
    assert len(axes[0].lines) == 20 + 1  # every trajectory and the mean
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), np.cumsum(arrays["explained_variance_ratio"]))
    bold = next(line for line in axes[2].lines if line.get_label() == "10 PCs")
    np.testing.assert_allclose(bold.get_ydata(), np.maximum(arrays["ev_per_sublayer"], -1))
    figure.savefig(tmp_path / "panels.png")
    plt.close(figure)
