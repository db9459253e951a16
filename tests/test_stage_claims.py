"""The judged statistics of the geometry, CAE, population and Jacobian stages against slow
references and known truths (the CAE claim fails when the CAE is the sublayer-mean
predictor)."""

from __future__ import annotations

import numpy as np
import pytest

from rsdyn.cae.claims import CAEClaims, ev_across, step_curves
from rsdyn.core.claims import judge, load_registry
from rsdyn.core.resampling import sequence_weights
from rsdyn.geometry.claims import PCAClaims, TeleportClaims, _weighted_median, _weighted_spread
from rsdyn.jacobian.claims import JacobianClaims


def test_weighted_median_and_spread_match_the_repeated_sample():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(15)
    values[3] = np.nan
    weights = sequence_weights(15, 20, 1)
    medians = _weighted_median(values, weights)
    points = rng.standard_normal((15, 2))
    spreads = _weighted_spread(points, weights / weights.sum(axis=1, keepdims=True))
    for w, median, spread in zip(weights, medians, spreads):
        rows = np.repeat(np.arange(15), w.astype(int))
        drawn = values[rows]
        drawn = np.sort(drawn[np.isfinite(drawn)])
        assert median == drawn[(len(drawn) - 1) // 2]  # the lower median of the drawn values
        sample = points[rows]
        assert spread == pytest.approx(np.mean(np.sum((sample - sample.mean(axis=0)) ** 2, axis=1)), rel=1e-10)


def test_pca_ev_at_unit_weights_is_the_pca_stage_curve():
    from rsdyn.core.linalg import fit_pca
    from rsdyn.geometry.pca import ev_per_sublayer_curve

    rng = np.random.default_rng(2)
    states = rng.standard_normal((40, 6, 10)) * np.linspace(1, 3, 6)[None, :, None] + rng.standard_normal((1, 6, 10))
    fit = fit_pca(states.reshape(-1, 10), 4)
    provider = PCAClaims(states, fit["mean"], fit["components"])
    got = provider.ev_per_sublayer(np.ones((1, 40)))[0]
    np.testing.assert_allclose(got, ev_per_sublayer_curve(states, fit["mean"], fit["components"])[:, -1], rtol=1e-10, atol=1e-12)
    weights = sequence_weights(40, 3, 0)
    for w, row in zip(weights, provider.ev_per_sublayer(weights)):
        sample = states[np.repeat(np.arange(40), w.astype(int))]
        for s in range(6):
            centred = sample[:, s] - fit["mean"]
            recon = centred @ fit["components"].T @ fit["components"]
            own = sample[:, s] - sample[:, s].mean(axis=0)
            assert row[s] == pytest.approx(1 - np.sum((centred - recon) ** 2) / np.sum(own**2), rel=1e-9)


def _teleport_groups(mid_recovers: bool, n_points=30, layers=(0, 3, 6, 9), n_sublayers=20, seed=0):
    """Synthetic teleport groups: each point starts off the control and decays toward it
    (factor per sublayer ``rate``), slowly at the ends and fast in the middle (or the
    reverse); positions in units of a data spread of 1."""
    rng = np.random.default_rng(seed)
    groups = {}
    start = rng.standard_normal((n_points, 2)) * 3
    for index, layer in enumerate(layers):
        middle = 0 < index < len(layers) - 1
        rate = 0.5 if middle == mid_recovers else 0.98
        steps = n_sublayers - 2 * layer
        decay = rate ** np.arange(steps)
        control = np.zeros((n_sublayers, 2))
        trajectories = start[:, None, :] * decay[None, :, None] + 0.01 * rng.standard_normal((n_points, steps, 2))
        groups[layer] = {"trajectories": trajectories, "control": control, "data_spread": np.ones(n_sublayers)}
    return groups


def test_teleport_statistics_find_mid_layer_recovery_and_its_reverse():
    claims = {claim["id"]: claim for claim in load_registry()["claims"]}
    ids = ["teleport_mid_layers_lower_mse", "teleport_mid_layers_lower_spread"]
    for mid_recovers, expected in ((True, "reproduced"), (False, "opposite")):
        provider = TeleportClaims(_teleport_groups(mid_recovers))
        assert provider.horizon == 20 - 2 * 9 - 1
        estimates = provider.estimate([claims[i]["statistic"].split(".")[1] for i in ids], "grid_points", 500, 0)
        by_id = {i: estimates[claims[i]["statistic"].split(".")[1]] for i in ids}
        table = judge({"level": 0.95, "claims": [claims[i] for i in ids]}, [by_id], 500, [0])
        assert [entry["verdict"] for entry in table] == [expected, expected]
        assert "0 vs 3" in table[0]["pairs"]


def cae_arrays(n_seeds=5, n_test=40, n_sublayers=12, d=6, predictor="cae", seed=0):
    """CAE arrays of a synthetic test set: states whose across-sequence spread grows with
    depth; a 'cae' reconstruction that recovers a growing share of it, or the sublayer
    training-mean predictor."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_sublayers, d)) * 5
    spread = np.linspace(0.5, 3, n_sublayers)
    states = means + spread[None, :, None] * rng.standard_normal((n_test, n_sublayers, d))
    sst = np.sum((states - means) ** 2, axis=2)
    sse = []
    for k in range(n_seeds):
        if predictor == "mean":
            reconstruction = np.broadcast_to(means, states.shape)
        else:
            share = np.linspace(0.1, 0.8, n_sublayers)[None, :, None]
            reconstruction = means + share * (states - means) + 0.05 * rng.standard_normal(states.shape)
        sse.append(np.sum((states - reconstruction) ** 2, axis=2))
    embedding = np.cumsum(rng.standard_normal((n_seeds, n_test, n_sublayers, 2)) * np.linspace(0.1, 2, n_sublayers)[None, None, :, None], axis=2)
    return {"embedding": embedding, "reconstruction_sse": np.stack(sse), "mean_predictor_sse": sst}


def test_ev_across_and_steps_against_loops():
    arrays = cae_arrays()
    w = sequence_weights(40, 2, 0)
    ev = ev_across(arrays["reconstruction_sse"][0], arrays["mean_predictor_sse"], w)
    for b in range(2):
        rows = np.repeat(np.arange(40), w[b].astype(int))
        assert ev[b, 3] == pytest.approx(1 - arrays["reconstruction_sse"][0][rows, 3].sum() / arrays["mean_predictor_sse"][rows, 3].sum())
    lengths, turning = step_curves(arrays["embedding"][1], w)
    rows = np.repeat(np.arange(40), w[0].astype(int))
    steps = np.diff(arrays["embedding"][1][rows], axis=1)
    assert lengths[0, 4] == pytest.approx(np.linalg.norm(steps[:, 4], axis=1).mean())
    angle = np.arctan2(steps[:, 5, 1], steps[:, 5, 0]) - np.arctan2(steps[:, 4, 1], steps[:, 4, 0])
    assert turning[0, 4] == pytest.approx(np.mean(np.abs((angle + np.pi) % (2 * np.pi) - np.pi)))


def _cae_verdict(arrays):
    claim = next(c for c in load_registry()["claims"] if c["id"] == "cae_explained_variance_increases")
    provider = CAEClaims(arrays)
    estimates = provider.estimate(["cae_ev_across_late_minus_early", "cae_ev_across_late"], "seeds_sequences", 2000, 0)
    main = estimates["cae_ev_across_late_minus_early"]
    main.extra["baseline"] = estimates["cae_ev_across_late"]
    return judge({"level": 0.95, "claims": [claim]}, [{claim["id"]: main}], 2000, [0])[0]


def test_the_cae_claim_holds_for_a_cae_and_fails_for_the_sublayer_mean_predictor():
    good = _cae_verdict(cae_arrays())
    assert good["verdict"] == "reproduced" and good["baseline_beaten"]
    mean = cae_arrays(predictor="mean")
    np.testing.assert_allclose(ev_across(mean["reconstruction_sse"][0], mean["mean_predictor_sse"], np.ones((1, 40))), 0.0, atol=1e-12)
    bad = _cae_verdict(mean)
    assert bad["verdict"] != "reproduced" and not bad["baseline_beaten"]


def test_cae_intervals_hold_the_seeds_variance():
    """Seeds that disagree widen the interval beyond the one-seed interval."""
    arrays = cae_arrays()
    arrays["embedding"] = arrays["embedding"] * np.array([0.5, 1.0, 1.5, 2.0, 2.5])[:, None, None, None] ** np.linspace(0, 1, 12)[None, None, :, None]
    several = CAEClaims(arrays).estimate(["cae_step_log_ratio"], "seeds_sequences", 1000, 0)["cae_step_log_ratio"]
    one = CAEClaims({**arrays, "embedding": arrays["embedding"][2:3]}).estimate(["cae_step_log_ratio"], "seeds_sequences", 1000, 0)["cae_step_log_ratio"]
    assert np.std(several.samples) > 1.5 * np.std(one.samples)
    assert "ONE training seed" in one.resampled and "5 training seeds" in several.resampled


def jacobian_design(rng, n_sequences=8, positions=(1, 4, 6), init_seeds=3, shift=0.2, rank=(5, 10)):
    """A jacobian.zarr-like design: trained rows on every sequence; the initial group on
    ``positions`` x ``init_seeds``, one draw of each surrogate on ``positions``."""
    positions = np.asarray(positions)

    def group(sequences, draws, gradient, ranks):
        rows = len(sequences)
        return {"rotation_index": rng.uniform(0.2, 0.4, (rows, 12)) + np.linspace(gradient, 0, 12),
                "cumulative_effective_rank_entropy": rng.uniform(*ranks, (rows, 6)),
                "sequence": np.asarray(sequences), "draw": np.asarray(draws)}

    return {
        "sample_indices": np.arange(100, 100 + n_sequences), "baseline_positions": positions,
        "trained": group(np.arange(n_sequences), np.zeros(n_sequences, int), shift, rank),
        "initial": group(np.tile(positions, init_seeds), np.repeat(np.arange(init_seeds), len(positions)), 0.0, (50, 60)),
        "svd_matched": group(positions, np.zeros(len(positions), int), 0.05, (20, 30)),
        "norm_matched": group(positions, np.zeros(len(positions), int), 0.0, (30, 40)),
    }


def slow_gradient(rotation):
    return rotation[:, :4].mean(axis=1) - rotation[:, -4:].mean(axis=1)


def test_jacobian_statistics_against_a_slow_reference():
    """Trained statistics over every sequence; the learned ones the smallest (rotation) or
    largest (rank) difference from a baseline on the baselines' sequences, paired by
    sequence; a resample equals the statistic of the repeated rows."""
    rng = np.random.default_rng(3)
    arrays = jacobian_design(rng)
    provider = JacobianClaims(arrays, d_model=64)
    est = provider.estimate(["rotation_index_early_minus_late", "product_rank_fraction"], "sequences", 50, 0)
    trained = arrays["trained"]
    assert est["rotation_index_early_minus_late"].value == pytest.approx(slow_gradient(trained["rotation_index"]).mean(), rel=1e-12)
    assert est["product_rank_fraction"].value == pytest.approx(trained["cumulative_effective_rank_entropy"][:, -1].mean() / 64, rel=1e-12)
    learned = provider.estimate(["rotation_gradient_learned", "product_rank_learned"], "sequences_seeds", 50, 0)
    paired_trained = slow_gradient(trained["rotation_index"][[1, 4, 6]]).mean()
    differences = [paired_trained - slow_gradient(arrays[name]["rotation_index"]).mean() for name in ("initial", "svd_matched", "norm_matched")]
    assert learned["rotation_gradient_learned"].value == pytest.approx(min(differences), rel=1e-12)
    ranks = [trained["cumulative_effective_rank_entropy"][[1, 4, 6], -1].mean() - arrays[name]["cumulative_effective_rank_entropy"][:, -1].mean()
             for name in ("initial", "svd_matched", "norm_matched")]
    assert learned["product_rank_learned"].value == pytest.approx(max(ranks) / 64, rel=1e-12)
    assert "3 sequences" in learned["rotation_gradient_learned"].resampled
    # one resample by hand: sequences and each baseline's draws drawn with the same counts
    from rsdyn.jacobian.statistics import resamples, row_index

    paired = provider.paired
    counts = resamples(paired, 50, 0)
    k = 7
    def repeated(name):
        sequence, draw = row_index(paired[name])
        weights = counts.sequences[k, sequence] * (counts.draws[name][k, draw] if name in counts.draws else 1)
        rows = np.repeat(np.arange(len(sequence)), weights.astype(int))
        return slow_gradient(paired[name]["rotation_index"][rows]).mean()
    by_hand = min(repeated("trained") - repeated(name) for name in ("initial", "svd_matched", "norm_matched"))
    assert learned["rotation_gradient_learned"].samples[k] == pytest.approx(by_hand, rel=1e-10)
    with pytest.raises(ValueError, match="sequences_seeds"):
        provider.estimate(["rotation_gradient_learned"], "sequences", 10, 0)


def test_on_a_model_whose_trained_weights_are_its_initial_weights_nothing_is_learned():
    rng = np.random.default_rng(4)
    arrays = jacobian_design(rng, shift=0.0, rank=(50, 60))
    arrays["trained"]["rotation_index"][[1, 4, 6]] = arrays["initial"]["rotation_index"][:3]
    arrays["trained"]["cumulative_effective_rank_entropy"][[1, 4, 6]] = arrays["initial"]["cumulative_effective_rank_entropy"][:3]
    arrays["initial"] = {key: value[:3] for key, value in arrays["initial"].items()}  # one init seed: the trained weights
    provider = JacobianClaims(arrays, d_model=64)
    registry = load_registry()
    for claim_id, name in (("jacobian_gradient_is_learned", "rotation_gradient_learned"), ("jacobian_collapse_is_learned", "product_rank_learned")):
        claim = next(c for c in registry["claims"] if c["id"] == claim_id)
        estimate = provider.estimate([name], "sequences_seeds", 2000, 0)[name]
        entry = judge({"level": 0.95, "claims": [claim]}, [{claim_id: estimate}], 2000, [0])[0]
        assert estimate.value == 0.0 or (name == "product_rank_learned" and estimate.value >= 0.0)
        assert entry["verdict"] in ("equivalent", "inconclusive", "contradicted"), entry


def test_a_bottleneck_random_updates_share_is_not_supported():
    """A product whose rank fraction is below a quarter but above a surrogate's: the
    bottleneck claim does not beat its baseline, so it is not supported."""
    rng = np.random.default_rng(5)
    arrays = jacobian_design(rng, rank=(5, 10))
    arrays["svd_matched"]["cumulative_effective_rank_entropy"][:] = 2.0  # a surrogate collapses further
    provider = JacobianClaims(arrays, d_model=64)
    registry = load_registry()
    claim = next(c for c in registry["claims"] if c["id"] == "jacobian_low_rank_bottleneck")
    estimate = provider.estimate(["product_rank_fraction"], "sequences", 2000, 0)["product_rank_fraction"]
    baseline = provider.estimate(["product_rank_learned"], "sequences_seeds", 2000, 0)["product_rank_learned"]
    from rsdyn.core.claims import Estimate

    estimate = Estimate(estimate.value, estimate.samples, estimate.resampled, {"baseline": baseline})
    entry = judge({"level": 0.95, "claims": [claim]}, [{claim["id"]: estimate}], 2000, [0])[0]
    assert estimate.value < 0.25 and entry["verdict"] == "inconclusive" and entry["baseline_beaten"] is False
