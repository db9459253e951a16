"""Resampled Fig. 1 quantities against recomputing them on the resampled sequences; distinct states."""

from __future__ import annotations

import numpy as np
import pytest

from rsdyn.core.verdicts import bootstrap_indices
from rsdyn.units import correlations, resample
from rsdyn.units import layer_stats as ls
from rsdyn.units import unit_stats as us


def test_count_weights_count_the_draws():
    indices = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(resample.count_weights(indices, 4), [[2, 0, 1, 0], [0, 1, 2, 0]])


def test_weighted_r_equals_r_of_the_resampled_sequences():
    acts = us.synthetic_activations(40, 3, 7, seed=4).astype(np.float64)
    acts[:, :, 3] += 500.0  # a massive unit: the raw moments would cancel badly
    acts[:, 0, 5] = 2.0  # a unit constant at sublayer 0
    indices = bootstrap_indices(40, 6, seed=1)
    got = resample.weighted_corr_consecutive(acts, resample.count_weights(indices, 40))
    for b, rows in enumerate(indices):
        expected = correlations.corr_consecutive(acts[rows])
        # r from centred moments: rounding ~ N * eps64 relative to 1
        np.testing.assert_allclose(got[b], expected, rtol=0, atol=1e-12)
    assert np.isnan(got[:, 0, 5]).all()


def test_resample_condition_equals_layer_stats_of_the_resampled_sequences():
    acts = us.synthetic_activations(30, 3, 10, seed=2).astype(np.float64)
    indices = bootstrap_indices(30, 4, seed=0)
    got = resample.resample_condition(acts, resample.count_weights(indices, 30), density_threshold=0.5, unit_chunk=4)
    for b, rows in enumerate([np.arange(30), *indices]):
        table = ls.layer_stats_from_arrays({"original": acts[rows]}, 0.5)
        sublayers = table[table["kind"] == "sublayer"].sort_values("index")
        transitions = table[table["kind"] == "transition"].sort_values("index")
        np.testing.assert_allclose(got["norm"][b], sublayers["norm_mean"], rtol=1e-12)
        np.testing.assert_allclose(got["density"][b], sublayers["density"], rtol=0, atol=0)
        np.testing.assert_allclose(got["cosine"][b], transitions["cosine_mean"], rtol=1e-12)
        np.testing.assert_allclose(got["velocity"][b], transitions["velocity_mean"], rtol=1e-12)
        np.testing.assert_allclose(got["r"][b], correlations.corr_consecutive(acts[rows]), rtol=0, atol=1e-6)  # float32


def test_resample_store_pairs_the_conditions(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 20, 2, 8, unit_chunk=4)
    indices = bootstrap_indices(20, 3, seed=2)
    out = resample.resample_store(store, indices, 0.1)
    assert set(out) == {"original", "shuffled"}
    assert out["original"]["r"].shape == (4, 3, 8) and out["shuffled"]["cosine"].shape == (4, 3)


def test_distinct_states_count_equal_rows_across_unit_chunks(tmp_path):
    acts = us.synthetic_activations(25, 2, 9, seed=3).astype(np.float64)
    # sublayer 0: five distinct states; sublayer 1: rows differing in one unit of the last chunk only
    acts[:, 0] = acts[np.arange(25) % 5, 0]
    acts[:, 1] = acts[0, 1]
    acts[::2, 1, 8] += 1.0
    expected = [len({tuple(row) for row in acts[:, s]}) for s in range(acts.shape[1])]
    assert expected[:2] == [5, 2]
    np.testing.assert_array_equal(ls.distinct_states(acts), expected)
    table = ls.layer_stats_from_arrays({"original": acts}, 0.1)
    assert table[table["kind"] == "sublayer"]["distinct_states"].tolist() == expected
    store = us.write_synthetic_store(tmp_path / "a.zarr", 25, 2, 9, unit_chunk=4)
    import zarr

    zarr.open_group(str(store), mode="r+")["original"][:] = acts.astype(np.float32)
    streamed = ls.layer_stats(store, 0.1)
    rows = streamed[(streamed["kind"] == "sublayer") & (streamed["condition"] == "original")]
    assert rows["distinct_states"].tolist() == expected


@pytest.mark.parametrize("n_units", [1, 5])
def test_refine_labels_is_exact_equality(n_units):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2, size=(30, n_units)).astype(np.float64)
    labels = ls.refine_labels(np.zeros(30, dtype=np.int64), values)
    for i in range(30):
        for j in range(30):
            assert (labels[i] == labels[j]) == bool(np.array_equal(values[i], values[j]))
