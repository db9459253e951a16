"""The CAE's statistics over training seeds and test sequences: the stored per-seed,
per-sequence arrays against a dense reference, each weighted statistic against a slow
loop, the sublayer-mean predictor scoring exactly 0, and the Fig. 3 rows whose intervals
resample seeds, then sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsdyn.cae.metrics import (
    early_late,
    ev_across_sequences,
    ev_block,
    explained_variance_block,
    group_size,
    resample_seeds_and_sequences,
    seed_fractions,
    step_distances,
    step_ratio,
)

# --------------------------------------------------------------------------- dense reference


def moments_over_units(values: np.ndarray) -> np.ndarray:
    return np.stack([values.mean(axis=-1), values.var(axis=-1)], axis=-1)


def dense_arrays(states, reconstructions, embedding, train_mean) -> dict[str, np.ndarray]:
    """The per-seed, per-sequence arrays of ``embedding.zarr`` computed densely in float64:
    states (n, 2L, D), reconstructions (S, n, 2L, D), embedding (S, n, 2L, 2), train_mean (2L, D)."""
    x = np.asarray(states, dtype=np.float64)
    residual = x[None] - np.asarray(reconstructions, dtype=np.float64)
    offset = x - train_mean
    return {
        "embedding": np.asarray(embedding, dtype=np.float32),
        "reconstruction_sse": (residual**2).sum(axis=-1),
        "residual_moments": moments_over_units(residual),
        "mean_predictor_sse": (offset**2).sum(axis=-1),
        "state_moments": moments_over_units(x),
        "mean_predictor_moments": moments_over_units(offset),
        "step_distance_per_sequence": step_distances(embedding),
        "train_sublayer_mean": np.asarray(train_mean, dtype=np.float64),
    }


def synthetic(n=24, n_sublayers=8, d=6, n_seeds=3, seed=0, noise=None, spread=0.0):
    """States of a growing offset plus per-sequence variation; reconstructions that recover
    part of the variation with depth-dependent noise (``noise`` per sublayer), seeds that
    differ by ``spread``; embeddings whose steps grow with depth (at a rate that differs between seeds by ``spread``)."""
    rng = np.random.default_rng(seed)
    offset = np.cumsum(rng.normal(size=(n_sublayers, d)), axis=0) * 3
    variation = rng.normal(size=(n, n_sublayers, d)) * np.linspace(1, 2, n_sublayers)[None, :, None]
    states = offset + variation
    train_mean = offset + rng.normal(scale=0.1, size=offset.shape)
    noise = np.linspace(1.2, 0.4, n_sublayers) if noise is None else np.asarray(noise)
    recon = np.stack([offset + variation * (0.8 + spread * rng.normal()) + rng.normal(size=variation.shape) * noise[None, :, None]
                      for _ in range(n_seeds)])
    steps = np.linspace(0.2, 2.0, n_sublayers)[None, None, :, None] ** (1 + spread * rng.normal(size=(n_seeds, 1, 1, 1)))
    embedding = np.cumsum(rng.normal(size=(n_seeds, n, n_sublayers, 2)) * steps, axis=2)
    return states, recon, embedding, train_mean


def full_arrays(states, recon, embedding, train_mean) -> dict[str, np.ndarray]:
    """``dense_arrays`` plus the per-seed curves ``summary_fig3`` reads."""
    from rsdyn.cae.metrics import explained_variance_per_sublayer

    arrays = dense_arrays(states, recon, embedding, train_mean)
    pooled = states.reshape(-1, states.shape[-1]).mean(axis=0)
    arrays["ev_per_sublayer"] = np.stack([explained_variance_per_sublayer(states, y) for y in recon])
    arrays["ev_per_sublayer_pooled_reference"] = np.stack([explained_variance_per_sublayer(states, y, pooled) for y in recon])
    arrays["test_variance_per_sublayer"] = states.var(axis=0).mean(axis=-1)
    arrays["test_r2_pooled"] = np.array([1 - ((states - y) ** 2).sum() / ((states - pooled) ** 2).sum() for y in recon])
    return arrays


# --------------------------------------------------------------------------- the stored arrays


def test_evaluated_arrays_match_the_dense_reference(tmp_path):
    import zarr

    from rsdyn.cae.batched import BatchedAutoencoder
    from rsdyn.cae.data import load_sources
    from rsdyn.cae.evaluate import evaluate_seeds
    from rsdyn.cae.metrics import explained_variance_per_sublayer

    rng = np.random.default_rng(5)
    states = (np.cumsum(rng.normal(size=(23, 6, 10)), axis=1) * rng.uniform(0.5, 8, 10) + rng.normal(0, 20, 10)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w", zarr_format=3)
    group.create_array("original", data=states, chunks=(4, 6, 5))
    rows = np.array([1, 2, 7, 8, 9, 15, 22])
    source = load_sources(tmp_path / "a.zarr", "original", {"test": rows}, seed=0, mode="stream", block_mb=1e-9)["test"]
    model = BatchedAutoencoder.from_seeds(10, 3, [0, 4]).eval()
    train_mean = rng.normal(size=(6, 10)) * 5
    held = evaluate_seeds(model, source, train_mean, rows)
    arrays = held.arrays()
    test = states[rows]
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(test.reshape(-1, 10))).reshape(2, len(rows), 6, 2)
        recon = model.decode(codes.reshape(2, -1, 2)).reshape(2, len(rows), 6, 10).numpy()
    expected = dense_arrays(test, recon, codes.numpy(), train_mean)
    # the reference runs the float32 network on all test states at once, the evaluation
    # block by block: the codes and reconstructions round differently (a few float32 ulp,
    # relative 1e-6 on values of order 1-100); everything after them is float64
    for name, value in expected.items():
        np.testing.assert_allclose(arrays[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    for k in range(2):
        np.testing.assert_allclose(arrays["ev_block_per_sublayer"][k], explained_variance_block(test, recon[k]), rtol=1e-5)
        np.testing.assert_allclose(arrays["ev_per_sublayer"][k], explained_variance_per_sublayer(test, recon[k]), rtol=1e-5)
        loop = [1 - sum(((test[i, s] - recon[k, i, s]) ** 2).sum() for i in range(len(rows)))
                / sum(((test[i, s] - train_mean[s]) ** 2).sum() for i in range(len(rows))) for s in range(6)]
        np.testing.assert_allclose(arrays["ev_across_sequences"][k], loop, rtol=1e-5)
        pooled = test.reshape(-1, 10).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(arrays["ev_per_sublayer_pooled_reference"][k], explained_variance_per_sublayer(test, recon[k], pooled), rtol=1e-5)
        np.testing.assert_allclose(arrays["test_mse_per_sublayer"][k], ((test - recon[k]) ** 2).mean(axis=(0, 2)), rtol=1e-5)
        assert arrays["test_loss"][k] == pytest.approx(((test - recon[k]) ** 2).mean(), rel=1e-5)
        assert arrays["test_r2_pooled"][k] == pytest.approx(1 - ((test - recon[k]) ** 2).sum() / ((test - pooled) ** 2).sum(), rel=1e-5)
    np.testing.assert_allclose(arrays["test_variance_per_sublayer"], test.astype(np.float64).var(axis=0).mean(axis=1), rtol=1e-6)
    assert arrays["step_distance"].shape == (2, 5) and arrays["mean_trajectory"].shape == (2, 6, 2)
    np.testing.assert_array_equal(arrays["test_sequences"], rows)
    np.testing.assert_array_equal(arrays["training_seeds"], [0, 4])


# --------------------------------------------------------------------------- weighted statistics against loops


def chosen(seeds, n_seeds):
    return list(range(n_seeds)) if seeds is None else list(seeds)


def test_across_sequence_ev_matches_a_loop_over_weights_and_seeds():
    states, recon, embedding, train_mean = synthetic()
    arrays = dense_arrays(states, recon, embedding, train_mean)
    sse, sst = arrays["reconstruction_sse"], arrays["mean_predictor_sse"]
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 3, size=24).astype(float)
    for seeds in (None, [2, 2, 0]):
        got = ev_across_sequences(sse, sst, weights, seeds)
        for s in range(8):
            values = []
            for k in chosen(seeds, 3):
                numerator = sum(weights[i] * sum((states[i, s, u] - recon[k, i, s, u]) ** 2 for u in range(6)) for i in range(24))
                denominator = sum(weights[i] * sum((states[i, s, u] - train_mean[s, u]) ** 2 for u in range(6)) for i in range(24))
                values.append(1 - numerator / denominator)
            assert got[s] == pytest.approx(np.mean(values), rel=1e-10)
    batch = ev_across_sequences(sse, sst, np.stack([weights, np.ones(24)]), np.array([[2, 2, 0], [0, 1, 2]]))
    np.testing.assert_allclose(batch, [ev_across_sequences(sse, sst, weights, [2, 2, 0]), ev_across_sequences(sse, sst)], rtol=1e-12)


def test_block_ev_of_weights_equals_the_dense_block_ev_of_repeated_sequences():
    states, recon, embedding, train_mean = synthetic()
    arrays = dense_arrays(states, recon, embedding, train_mean)
    rows = np.random.default_rng(2).integers(0, 24, size=24)  # a bootstrap resample, repeats included
    weights = np.bincount(rows, minlength=24).astype(float)
    for seeds in (None, [1, 1, 0]):
        got = ev_block(arrays["state_moments"], arrays["residual_moments"], weights, seeds)
        expected = np.mean([explained_variance_block(states[rows], recon[k][rows]) for k in chosen(seeds, 3)], axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(ev_block(arrays["state_moments"], arrays["residual_moments"][[0]]), explained_variance_block(states, recon[0]), rtol=1e-10)


def test_step_ratio_matches_a_loop():
    embedding = synthetic(n_sublayers=9)[2]
    distances = step_distances(embedding)  # (S, n, 8)
    weights = np.random.default_rng(3).integers(0, 3, size=24).astype(float)
    for part, seeds in ((4, None), (3, [0, 2, 2])):
        q = -(-8 // part)
        ratios = []
        for k in chosen(seeds, 3):
            steps = [sum(weights[i] * distances[k, i, t] for i in range(24)) / weights.sum() for t in range(8)]
            ratios.append(np.mean(steps[-q:]) / np.mean(steps[:q]))
        assert step_ratio(distances, weights, seeds, part) == pytest.approx(np.mean(ratios), rel=1e-12)


def test_early_late_and_group_sizes():
    values = np.array([[0.1, np.nan, 0.3, 0.9, 0.5, 0.7, 0.2], [np.nan, np.nan, np.nan, 1.0, 2.0, 3.0, 4.0]])
    assert [group_size(n, 4) for n in (1, 4, 5, 60, 59)] == [1, 1, 2, 15, 15] and group_size(60, 3) == 20
    early, late = early_late(values, 3)  # groups of 3
    np.testing.assert_allclose(early, [0.2, np.nan])
    np.testing.assert_allclose(late, [np.median([0.5, 0.7, 0.2]), 3.0])
    mean_early, _ = early_late(values, 3, reduce="mean")
    np.testing.assert_allclose(mean_early, [0.2, np.nan])


def test_resamples_draw_seeds_then_sequences_with_replacement():
    seeds, weights = resample_seeds_and_sequences(5, 40, 300, seed=7)
    assert seeds.shape == (300, 5) and weights.shape == (300, 40)
    assert seeds.min() >= 0 and seeds.max() == 4 and np.all(weights.sum(axis=1) == 40)
    assert len({tuple(row) for row in seeds}) > 100  # seeds are resampled, not fixed
    again = resample_seeds_and_sequences(5, 40, 300, seed=7)
    assert np.array_equal(seeds, again[0]) and np.array_equal(weights, again[1])
    assert not np.array_equal(weights, resample_seeds_and_sequences(5, 40, 300, seed=8)[1])
    np.testing.assert_allclose(seed_fractions(np.array([[0, 0, 3]]), 4), [[2 / 3, 0, 0, 1 / 3]])


# --------------------------------------------------------------------------- the baseline and the rows


def test_the_sublayer_mean_predictor_explains_exactly_nothing():
    """Replacing the CAE's reconstructions by the sublayer training means gives an
    across-sequence EV of exactly 0 at every sublayer, and no row that asks whether the
    CAE beats that predictor comes out positive."""
    from rsdyn.cae.summary import across_ev_statistics, summary_fig3

    states, recon, embedding, train_mean = synthetic()
    as_mean = np.broadcast_to(train_mean, recon.shape)
    arrays = full_arrays(states, as_mean, embedding, train_mean)
    assert np.array_equal(ev_across_sequences(arrays["reconstruction_sse"], arrays["mean_predictor_sse"]), np.zeros(8))
    seeds, weights = resample_seeds_and_sequences(3, 24, 50, seed=1)
    assert np.array_equal(ev_across_sequences(arrays["reconstruction_sse"], arrays["mean_predictor_sse"], weights, seeds), np.zeros((50, 8)))
    assert across_ev_statistics(arrays)["minus_mean_predictor"] == 0.0
    rows = summary_fig3(arrays, n_resamples=100, seed=3)
    for name in ("cae_ev_across_early", "cae_ev_across_late", "cae_ev_across_minus_mean_predictor",
                 "cae_ev_block_minus_mean_predictor_early", "cae_ev_block_minus_mean_predictor_late"):
        assert rows[name]["value"] == pytest.approx(0.0, abs=1e-12) and rows[name]["verdict"] != "reproduced", name
    assert rows["cae_sublayers_beating_mean_predictor"]["value"] == 0.0


def test_fig3_rows_judge_a_planted_effect_and_resample_seeds_and_sequences():
    from rsdyn.cae.summary import summary_fig3

    arrays = full_arrays(*synthetic(n=40, n_sublayers=12, spread=0.05, noise=np.linspace(2.0, 0.3, 12)))
    rows = summary_fig3(arrays, n_resamples=200, seed=4)
    assert rows == summary_fig3(arrays, n_resamples=200, seed=4)  # seeded
    for name in ("cae_ev_across_late_minus_early", "cae_ev_across_late", "cae_ev_across_minus_mean_predictor", "cae_step_distance_late_over_early"):
        row = rows[name]
        assert row["interval"][0] <= row["value"] <= row["interval"][1], name
        assert row["verdict"] == "reproduced", name
        assert row["resampled"] == "3 training seeds, then test sequences, each with replacement (200 resamples, seed 4)"
    assert rows["cae_ev_across_early"]["verdict"] == "opposite"  # reconstruction noise above the variation early
    diff = rows["cae_ev_across_late_minus_early"]
    assert diff["value"] == pytest.approx(rows["cae_ev_across_late"]["value"] - rows["cae_ev_across_early"]["value"])
    block = rows["cae_ev_block_late_minus_early"]
    assert block["value"] == pytest.approx(rows["cae_ev_block_late"]["value"] - rows["cae_ev_block_early"]["value"])
    flipped = dict(arrays, step_distance_per_sequence=arrays["step_distance_per_sequence"][:, :, ::-1])
    assert summary_fig3(flipped, n_resamples=200, seed=4)["cae_step_distance_late_over_early"]["verdict"] == "opposite"


def test_training_variance_widens_the_interval():
    """Seeds that disagree widen the interval; copies of one seed leave only the sequences' variance."""
    from rsdyn.cae.summary import summary_fig3

    arrays = full_arrays(*synthetic(n=40, n_sublayers=12, n_seeds=5, spread=0.5))
    copies = {name: (np.repeat(value[:1], 5, axis=0) if value.shape[:1] == (5,) else value) for name, value in arrays.items()}
    for name in ("cae_step_distance_late_over_early", "cae_ev_across_late"):
        varied, fixed = summary_fig3(arrays, 300, 0)[name]["interval"], summary_fig3(copies, 300, 0)[name]["interval"]
        assert varied[1] - varied[0] > 1.2 * (fixed[1] - fixed[0]), name
