"""Layer statistics against per-sample loops; streaming = in memory; the Fig. 1-2 summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsdyn.core.store import read_group
from rsdyn.units import layer_stats as ls
from rsdyn.units import unit_stats as us


def test_layer_stats_match_per_sample_loops():
    acts = us.synthetic_activations(12, 3, 10, seed=1).astype(np.float64)
    threshold = 0.5
    table = ls.layer_stats_from_arrays({"original": acts}, threshold)
    sublayers = table[table["kind"] == "sublayer"].set_index("index")
    transitions = table[table["kind"] == "transition"].set_index("index")
    n_samples, n_sublayers, n_units = acts.shape
    for l in range(n_sublayers):
        norms = [np.linalg.norm(acts[n, l]) for n in range(n_samples)]
        assert sublayers.loc[l, "norm_mean"] == pytest.approx(np.mean(norms), rel=1e-12)
        assert sublayers.loc[l, "norm_sem"] == pytest.approx(np.std(norms, ddof=1) / np.sqrt(n_samples), rel=1e-10)
        assert sublayers.loc[l, "mean_abs_activation"] == pytest.approx(np.mean(np.abs(acts[:, l])), rel=1e-12)
        active = [abs(np.mean(acts[:, l, u])) > threshold for u in range(n_units)]
        assert sublayers.loc[l, "density"] == pytest.approx(np.mean(active))
    for t in range(n_sublayers - 1):
        cosines = [np.dot(acts[n, t], acts[n, t + 1]) / np.linalg.norm(acts[n, t]) / np.linalg.norm(acts[n, t + 1])
                   for n in range(n_samples)]
        steps = [np.linalg.norm(acts[n, t + 1] - acts[n, t]) for n in range(n_samples)]
        assert transitions.loc[t, "cosine_mean"] == pytest.approx(np.mean(cosines), rel=1e-12)
        assert transitions.loc[t, "cosine_sem"] == pytest.approx(np.std(cosines, ddof=1) / np.sqrt(n_samples), rel=1e-8)
        assert transitions.loc[t, "velocity_mean"] == pytest.approx(np.mean(steps), rel=1e-12)
        assert transitions.loc[t, "velocity_sem"] == pytest.approx(np.std(steps, ddof=1) / np.sqrt(n_samples), rel=1e-8)
        assert transitions.loc[t, "velocity_sd"] == pytest.approx(np.std(steps, ddof=1), rel=1e-8)
        assert transitions.loc[t, "cosine_sd"] == pytest.approx(np.std(cosines, ddof=1), rel=1e-8)
        assert transitions.loc[t, "transition_type"] == ("within" if t % 2 == 0 else "cross")
    assert list(sublayers["name"]) == ["L0.pre_attn", "L0.pre_mlp", "L1.pre_attn", "L1.pre_mlp", "L2.pre_attn", "L2.pre_mlp"]
    assert transitions.loc[1, "name"] == "L0.pre_mlp->L1.pre_attn"


def test_streamed_store_equals_in_memory(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 15, 3, 11, unit_chunk=4)
    data = read_group(store)
    streamed = ls.layer_stats(store, 0.2)
    in_memory = ls.layer_stats_from_arrays({c: data[c] for c in us.CONDITIONS}, 0.2)
    pd.testing.assert_frame_equal(streamed, in_memory, rtol=1e-12)
    assert set(streamed["condition"]) == {"original", "shuffled"}
    assert len(streamed) == 2 * (6 + 5)


def test_layer_stats_refuse_non_finite_values_naming_units(tmp_path):
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 6, 2, 8, unit_chunk=4)
    import zarr

    zarr.open_group(str(store), mode="r+")["original"][2, 3, 5] = np.nan
    with pytest.raises(us.UnitStatsInputError, match="'original' has NaN or inf values in units 4-7"):
        ls.layer_stats(store, 0.1)


def test_layer_stats_refuse_too_few_samples():
    with pytest.raises(us.UnitStatsInputError, match="2 samples; layer_stats needs at least 3"):
        ls.layer_stats_from_arrays({"original": np.ones((2, 4, 3))}, 0.1)
