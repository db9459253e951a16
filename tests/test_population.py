"""Population stage (population.zarr), the Fig. 2 rows and README section, and Fig. 2
with panel D, on a small synthetic capture."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from rsdyn.core.errors import PopulationInputError
from rsdyn.core.figures import save_figure
from rsdyn.core.store import read_group, write_group
from rsdyn.population import population as pop
from rsdyn.population import summary as rs
from rsdyn.population.figure import make_fig2
from rsdyn.population.jpca import jpca, jpca_of_scores
from rsdyn.population.run import population_arrays
from rsdyn.units import unit_stats as us
from rsdyn.units.rotations import rotation_number

JPCA = {"k": 4, "windows": None}
TME = {"n_surrogates": 12, "unit_surrogates": 30, "seed": 3}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("population")
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 40, 5, 12, unit_chunk=4)
    settings = {"n_shuffles": 40}
    arrays, attrs = us.gather([
        write_group(tmp_path / "shard_0.zarr", us.compute_shard(store, 0, 12, settings), attrs=us.shard_attrs(store, 0, 12, settings))
    ])
    unit_stats = read_group(write_group(tmp_path / "unit_stats.zarr", arrays, attrs=attrs))
    arrays, attrs = population_arrays(store, JPCA, TME, 0.05)
    population = read_group(write_group(tmp_path / "population.zarr", arrays, attrs=attrs))
    return tmp_path, store, unit_stats, population, attrs


def test_population_store_holds_jpca_windows_and_tme(stores):
    _, store, _, population, attrs = stores
    raw = read_group(store)["original"].astype(np.float64)
    states = pop.soft_normalise(raw)  # jpca.normalize: soft (the default); the per-unit TME R uses the raw states
    group = population["original"]
    reference = jpca(states, k=4)
    assert float(group["jpca"]["jpca_ratio"]) == pytest.approx(reference["jpca_ratio"], rel=1e-9)
    np.testing.assert_allclose(group["jpca"]["frequencies"], reference["frequencies"], rtol=1e-9)
    assert group["jpca"]["projection"].shape == (40, 10, 2)
    assert group["jpca"]["tme_jpca_ratio"].shape == (12,)
    assert 0 <= float(group["jpca"]["tme_percentile"]) <= 100
    assert attrs["windows"] == [[0, 3], [3, 7], [7, 10]]  # 10 sublayers: thirds, a quarter would be < 3
    window = group["window_1"]
    np.testing.assert_array_equal(window["sublayers"], [3, 7])
    assert float(window["jpca_ratio"]) == pytest.approx(jpca(states[:, 3:7], k=4)["jpca_ratio"], rel=1e-9)
    deviations = states - states.mean(axis=0, keepdims=True)
    assert float(group["jpca_deviations"]["jpca_ratio"]) == pytest.approx(jpca(deviations, k=4)["jpca_ratio"], rel=1e-9)
    window_deviations = states[:, 3:7] - states[:, 3:7].mean(axis=0, keepdims=True)
    assert float(group["window_1_deviations"]["jpca_ratio"]) == pytest.approx(jpca(window_deviations, k=4)["jpca_ratio"], rel=1e-9)
    tme = group["tme_rotations"]
    np.testing.assert_allclose(tme["observed"], rotation_number(raw.mean(axis=0).T), atol=1e-12)
    assert tme["samples"].shape == (30, 12)
    np.testing.assert_array_equal(tme["fdr"], false_discovery_control(tme["pvalue"]) <= 0.05)
    assert float(tme["tme_constraint_error"]) < 1e-6


def test_population_is_seeded(stores):
    _, store, _, population, _ = stores
    again, _ = population_arrays(store, JPCA, TME, 0.05)
    for condition in pop.CONDITIONS:
        np.testing.assert_array_equal(again[condition]["jpca"]["tme_jpca_ratio"], population[condition]["jpca"]["tme_jpca_ratio"])
        np.testing.assert_array_equal(again[condition]["tme_rotations"]["samples"], population[condition]["tme_rotations"]["samples"])


def test_settings_that_do_not_fit_the_capture_are_refused(stores):
    _, store, _, _, _ = stores
    with pytest.raises(PopulationInputError, match="jpca.k = 50"):
        population_arrays(store, {"k": 50}, TME)
    with pytest.raises(PopulationInputError, match="jpca.windows"):
        population_arrays(store, {"k": 4, "windows": [[0, 11]]}, TME)


def test_percentile_of():
    assert pop.percentile_of(2.0, np.array([1.0, 2.0, 3.0, np.nan])) == pytest.approx(50.0)
    assert np.isnan(pop.percentile_of(np.nan, np.array([1.0])))


def test_surrogate_ratio_goes_through_the_whole_definition():
    rng = np.random.default_rng(0)
    surrogate = rng.standard_normal((20, 9, 4)).cumsum(axis=1) + 5.0
    flat = surrogate.reshape(-1, 4)
    centred = (flat - flat.mean(axis=0)).reshape(surrogate.shape)
    ratio, literal = pop.surrogate_jpca_ratios(surrogate)
    assert ratio == pytest.approx(jpca_of_scores(centred)["jpca_ratio"], rel=1e-9)
    assert literal == pytest.approx(jpca_of_scores(centred)["jpca_ratio_literal"], rel=1e-9)


# ----------------------------------------------------------------------------- summary rows


def test_rotation_rows(stores):
    _, _, unit_stats, population, _ = stores
    rows = rs.summary_rotations(unit_stats, population, n_resamples=30, seed=0)
    original = unit_stats["original"]
    observed = original["rotations"]
    assert rows["rotations_abs_mean"]["value"] == pytest.approx(np.abs(observed).mean())
    assert rows["rotations_abs_mean"]["paper"] == 10.74
    for null in ("point_shuffle", "increment_shuffle", "layer_shuffle", "phase", "tme"):
        mean = population["original"]["tme_rotations"]["mean"] if null == "tme" else original[f"rotations_{null}_mean"]
        fdr = population["original"]["tme_rotations"]["fdr"] if null == "tme" else original[f"rotations_{null}_fdr"]
        excess = rows[f"rotations_excess_turns_{null}"]
        assert excess["value"] == pytest.approx(np.mean(np.abs(observed) - np.abs(mean)))
        assert excess["interval"][0] <= excess["value"] <= excess["interval"][1]
        assert excess["verdict"] in ("reproduced", "opposite", "inconclusive")
        assert rows[f"rotations_fdr_fraction_{null}"]["value"] == pytest.approx(np.mean(fdr))
    assert abs(rows["rotations_point_shuffle_mean"]["value"]) < 1e-12  # reversed pairs
    for name in ("jpca_ratio", "jpca_ratio_window0", "jpca_ratio_shuffled", "jpca_ratio_window2_shuffled",
                 "jpca_ratio_deviations", "jpca_ratio_deviations_window1_shuffled"):
        entry = rows[name]
        assert entry["expected"].startswith(">") and "tme_percentile" in entry, name
        assert entry["verdict"] in ("reproduced", "opposite", "inconclusive")
    assert rows["jpca_ratio"]["value"] == pytest.approx(float(population["original"]["jpca"]["jpca_ratio"]))


def test_jpca_verdict_needs_the_interval_below_the_tme_5th_percentile_for_opposite():
    assert rs.tme_verdict([0.5, 0.6], q05=0.2, q95=0.4) == "reproduced"
    assert rs.tme_verdict([0.3, 0.6], q05=0.2, q95=0.4) == "inconclusive"
    assert rs.tme_verdict([0.1, 0.15], q05=0.2, q95=0.4) == "opposite"


def test_bootstrap_of_the_jpca_ratio_resamples_sequences(stores):
    _, _, _, population, _ = stores
    scores = population["original"]["jpca"]["scores"].astype(np.float64)
    samples = rs.bootstrap_jpca_ratio(scores, n_resamples=5, seed=1)
    rows = np.random.default_rng([1, len(scores)]).integers(0, len(scores), size=(5, len(scores)))[0]
    first = scores[rows] - scores[rows].reshape(-1, scores.shape[2]).mean(axis=0)
    assert samples[0] == pytest.approx(jpca_of_scores(first)["jpca_ratio"], rel=1e-9)
    each = rs.bootstrap_jpca_ratio(scores, n_resamples=5, seed=1, each_sublayer=True)
    assert each[0] == pytest.approx(jpca_of_scores(scores[rows] - scores[rows].mean(axis=0))["jpca_ratio"], rel=1e-9)


def test_readme_section_renders_every_null_and_window(stores):
    _, _, unit_stats, population, _ = stores
    summary = json.loads(json.dumps({"run": "synthetic", "model": {"model_name": "synthetic"},
                                     "rows": rs.summary_rotations(unit_stats, population, n_resamples=10)}))
    text = rs.readme_section(summary)
    assert text.startswith("### Are the rotations real?")
    for label in ("point shuffle", "increment shuffle", "layer shuffle", "phase surrogate", "TME surrogate", "all sublayers",
                  "| pooled | sublayers 3-6 |", "| deviations | sublayers 3-6 |"):
        assert label in text, label
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    for table in tables:  # every row has as many cells as the header (escaped pipes aside)
        assert len({line.replace("\\|", "").count("|") for line in table}) == 1, table


def test_readme_generator_writes_the_rotation_section_between_its_markers(stores, tmp_path):
    from rsdyn.report import readme

    _, _, unit_stats, population, _ = stores
    summary = json.loads(json.dumps({"run": "synthetic", "model": {"model_name": "synthetic"}, "rows": rs.summary_rotations(
        unit_stats, population, n_resamples=10)}))
    path = tmp_path / "README.md"
    markers = "<!-- BEGIN generated: {0} -->\nold\n<!-- END generated: {0} -->\n"
    path.write_text("### Are the rotations real?\n\n" + "".join(markers.format(name) for name in ("results", "rotations", "definitions")))
    text = readme.update_readme(path, summary)
    block = text.split("<!-- BEGIN generated: rotations -->\n")[1].split("<!-- END")[0]
    assert block == rs.readme_section(summary).split("\n", 1)[1].lstrip("\n")
    assert text.count("### Are the rotations real?") == 1


def test_fig2_with_population_renders(stores):
    tmp_path, _, unit_stats, population, _ = stores
    paths = [tmp_path / "fig2.png", tmp_path / "fig2.pdf"]
    save_figure(make_fig2(unit_stats, population, n_example_units=3, title="synthetic"), paths, dpi=50)
    assert all(path.stat().st_size > 1000 for path in paths)


@pytest.mark.parametrize("shape", [(30, 10, 4), (50, 6, 4)])  # the second keeps fewer mode-0 directions than sequences
def test_surrogate_null_from_moments_equals_the_whole_definition_on_each_surrogate(shape):
    from rsdyn.population.tme import fit_tme, sample_tme

    rng = np.random.default_rng(3)
    tensor = rng.standard_normal(shape).cumsum(axis=1) + np.linspace(0, 4, shape[1])[None, :, None]
    model = fit_tme(tensor)
    null = pop.surrogate_null(model, 40, seed=3, stream=2)
    expected = np.array([pop.surrogate_jpca_ratios(surrogate) for surrogate in sample_tme(model, 40, seed=3, stream=2)])
    # the moments are sums of ~N S products of O(1) numbers: rounding ~1e-13 relative in each R^2
    np.testing.assert_allclose(null[:, 0], expected[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(null[:, 1], expected[:, 1], rtol=1e-7, atol=1e-10)  # a ratio of two R^2 near 0 amplifies it


def test_weighted_jpca_ratios_equal_jpca_of_the_resampled_rows():
    from rsdyn.population.jpca import RATIO_KEYS, weighted_jpca_ratios

    rng = np.random.default_rng(4)
    scores = rng.standard_normal((25, 8, 4)).cumsum(axis=1) + 3.0
    weights = np.vstack([np.ones(25), rng.multinomial(25, np.full(25, 1 / 25), size=4), np.eye(25)[:2] * 25])
    for each_sublayer in (False, True):
        out = weighted_jpca_ratios(scores, weights, each_sublayer)
        for b, row in enumerate(weights[:5]):
            sample = scores[np.repeat(np.arange(25), row.astype(int))]
            centre = sample.mean(axis=0, keepdims=True) if each_sublayer else sample.reshape(-1, 4).mean(axis=0)
            reference = jpca_of_scores(sample - centre)
            for key in RATIO_KEYS:
                assert out[key][b] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), (each_sublayer, b, key)
        # one sequence repeated: its centred states have rank < k once each sublayer is centred
        if each_sublayer:
            assert np.isnan(out["jpca_ratio"][5:]).all()
