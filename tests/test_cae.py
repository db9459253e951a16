"""Compressing autoencoder: architecture, split, early stopping, determinism, outputs."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from rsdyn.cae.metrics import (
    explained_variance_block,
    explained_variance_per_sublayer,
    step_distances,
)
from rsdyn.cae.model import (
    CompressingAutoencoder,
    build_model,
    layer_widths,
    mse,
    train_cae,
    warmup_factor,
)
from rsdyn.cae.run import load_cae, run_cae
from rsdyn.cae.settings import split_by_sequence
from rsdyn.core.store import read_group, write_group


@pytest.mark.parametrize("d_model", [576, 4096])
def test_widths_follow_the_geometric_rule(d_model):
    k = 10
    widths = layer_widths(d_model, k)
    ratio = (2 / d_model) ** (1 / (k - 1))
    assert len(widths) == k
    assert widths[0] == d_model and widths[-1] == 2
    for i, width in enumerate(widths):
        assert abs(width - d_model * ratio**i) <= 0.5
    assert all(a >= b for a, b in zip(widths, widths[1:]))


def test_bad_widths_raise():
    with pytest.raises(ValueError, match="above 2"):
        layer_widths(2, 10)
    with pytest.raises(ValueError, match="at least 2"):
        layer_widths(64, 1)


@pytest.mark.parametrize("d_model, k", [(576, 10), (4096, 10), (32, 3)])
def test_architecture_and_forward_shapes(d_model, k):
    model = CompressingAutoencoder(d_model, k)
    for side in (model.encoder, model.decoder):
        linears = [m for m in side if isinstance(m, nn.Linear)]
        norms = [m for m in side if isinstance(m, nn.LayerNorm)]
        assert len(linears) == k and len(norms) == k - 1
        assert isinstance(side[-1], nn.Linear)  # the last layer of each side is plain Linear
        kinds = [type(m) for m in side[:-1]]
        assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU] * (k - 1)
    encoder_out = [m.out_features for m in model.encoder if isinstance(m, nn.Linear)]
    decoder_out = [m.out_features for m in model.decoder if isinstance(m, nn.Linear)]
    assert encoder_out == model.widths
    assert decoder_out == model.widths[-2::-1] + [d_model]
    x = torch.randn(5, 3, d_model)
    with torch.no_grad():
        assert model.encode(x).shape == (5, 3, 2)
        assert model(x).shape == (5, 3, d_model)


def scaled_data():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(200, 6, generator=generator) * torch.tensor([1.0, 2, 3, 50, 5, 6]) + 7
    data[:, 2] = 4.0  # a unit without variance
    return data


def test_input_scaling_global_is_one_mean_per_unit_and_one_scalar():
    data = scaled_data()
    model = build_model(6, 3, seed=0)
    model.set_input_scaling(data, "global")
    expected = data.double().numpy()
    np.testing.assert_allclose(model.input_mean.numpy(), expected.mean(axis=0), rtol=1e-6)
    rms = np.sqrt(np.mean((expected - expected.mean(axis=0)) ** 2))
    np.testing.assert_allclose(model.input_scale.numpy(), np.full(6, rms), rtol=1e-6)
    assert model.loss_normaliser().item() == pytest.approx(rms**2, rel=1e-5)


def test_input_scaling_unit_is_each_units_mean_and_std():
    data = scaled_data()
    model = build_model(6, 3, seed=0)
    model.set_input_scaling(data, "unit")
    expected = data.double().numpy()
    std = np.array([np.sqrt(np.mean((expected[:, j] - expected[:, j].mean()) ** 2)) for j in range(6)])
    std[2] = 1.0  # no variance: divided by 1
    np.testing.assert_allclose(model.input_mean.numpy(), expected.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.input_scale.numpy(), std, rtol=1e-6)
    assert model.loss_normaliser().item() == pytest.approx(np.mean(std**2), rel=1e-5)
    with torch.no_grad():  # the encoder sees standardised inputs
        scaled = (data - model.input_mean) / model.input_scale
    np.testing.assert_allclose(scaled.std(dim=0, unbiased=False).numpy()[[0, 1, 3, 4, 5]], 1.0, rtol=1e-4)


def test_input_scaling_none_and_bad_mode():
    model = build_model(6, 3, seed=0)
    model.set_input_scaling(scaled_data(), "unit")
    model.set_input_scaling(scaled_data(), "none")
    assert torch.equal(model.input_mean, torch.zeros(6)) and torch.equal(model.input_scale, torch.ones(6))
    with pytest.raises(ValueError, match="cae.input_scaling = 'bogus'; allowed: global, unit, none"):
        model.set_input_scaling(scaled_data(), "bogus")


@pytest.mark.parametrize("mode", ["global", "unit"])
def test_input_scaling_makes_the_model_equivariant_to_units(mode):
    data = scaled_data()
    model = build_model(6, 3, seed=0)
    model.set_input_scaling(data, mode)
    shifted = build_model(6, 3, seed=0)  # an affine change of units leaves the embedding unchanged
    shifted.set_input_scaling(data * 4 - 3, mode)
    with torch.no_grad():
        torch.testing.assert_close(shifted.encode(data * 4 - 3), model.encode(data), rtol=1e-4, atol=1e-4)
        varying = [0, 1, 3, 4, 5]  # a unit without variance keeps scale 1 under "unit"
        torch.testing.assert_close(shifted(data * 4 - 3)[:, varying], (model(data) * 4 - 3)[:, varying], rtol=1e-4, atol=1e-3)


def test_warmup_factor_is_linear_then_one():
    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def reference_epoch(model, train, lr, batch_size, grad_clip, warmup_steps, seed):
    """One epoch of Adam written out step by step: normalised MSE, explicit global-norm
    clipping, explicit linear warm-up."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    normaliser = float(np.mean(model.input_scale.double().numpy() ** 2))
    params = list(model.parameters())
    for step, begin in enumerate(range(0, len(train), batch_size)):
        batch = train[order[begin : begin + batch_size]]
        loss = ((model(batch) - batch) ** 2).mean() / normaliser
        grads = torch.autograd.grad(loss, params)
        norm = float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))
        factor = 1.0 if grad_clip is None else min(1.0, grad_clip / (norm + 1e-6))
        for p, g in zip(params, grads):
            p.grad = g * factor
        optimiser.param_groups[0]["lr"] = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
        optimiser.step()
    return model.state_dict()


@pytest.mark.parametrize("grad_clip, warmup_epochs", [(None, 0), (0.05, 0), (None, 0.5), (0.05, 0.5)])
def test_clipping_and_warmup_match_a_step_by_step_reference(grad_clip, warmup_epochs):
    data = scaled_data()
    train, val = data[:160], data[160:]

    def fresh():
        model = build_model(6, 3, seed=2)
        model.set_input_scaling(train, "unit")
        return model

    result = train_cae(fresh(), train, val, lr=1e-2, max_epochs=1, batch_size=16, grad_clip=grad_clip, warmup_epochs=warmup_epochs, seed=5, progress=False)
    expected = reference_epoch(fresh(), train, 1e-2, 16, grad_clip, round(warmup_epochs * 10), seed=5)
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-6)
    assert result.history[0]["lr"] == pytest.approx(1e-2)
    if grad_clip is not None:  # the recorded norm is the one before clipping
        assert result.history[0]["grad_norm_max"] > grad_clip


def test_clipping_bounds_the_gradient_norm_of_every_step():
    data = scaled_data()
    model = build_model(6, 3, seed=0)
    model.set_input_scaling(data, "none")  # raw units: large gradients
    seen = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))))
        return original_step(self, *args, **kwargs)

    torch.optim.Adam.step = recording_step
    try:
        result = train_cae(model, data[:160], data[160:], max_epochs=2, batch_size=32, grad_clip=0.5, progress=False)
    finally:
        torch.optim.Adam.step = original_step
    assert len(seen) == 10 and max(seen) <= 0.5 * (1 + 1e-5)
    assert max(row["grad_norm_max"] for row in result.history) > 0.5


def test_bad_training_options_raise():
    data = scaled_data()
    with pytest.raises(ValueError, match="grad_clip"):
        train_cae(build_model(6, 3, 0), data, data, grad_clip=0.0, progress=False)
    with pytest.raises(ValueError, match="warmup_epochs"):
        train_cae(build_model(6, 3, 0), data, data, warmup_epochs=-1, progress=False)


def test_split_by_sequence():
    split = split_by_sequence(100, 0.15, 0.2, seed=3)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (65, 15, 20)
    joined = np.concatenate(list(split.values()))
    assert sorted(joined) == list(range(100))  # disjoint and complete
    again = split_by_sequence(100, 0.15, 0.2, seed=3)
    assert all(np.array_equal(split[key], again[key]) for key in split)
    other = split_by_sequence(100, 0.15, 0.2, seed=4)
    assert not np.array_equal(split["test"], other["test"])
    with pytest.raises(ValueError, match="training sequence"):
        split_by_sequence(2, 0.3, 0.3)
    with pytest.raises(ValueError, match="sum below 1"):
        split_by_sequence(100, 0.6, 0.5)


def test_early_stopping_stops_and_keeps_the_best_model():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(256, 8, generator=generator) * 0.1 + 5.0
    val = torch.randn(64, 8, generator=generator) * 0.1 - 5.0  # fitting train makes val worse
    model = build_model(8, 3, seed=0)
    result = train_cae(model, train, val, max_epochs=50, patience=3, batch_size=32, progress=False)
    losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early
    assert len(losses) == result.best_epoch + 3 < 50
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert all(loss >= losses[result.best_epoch - 1] for loss in losses[result.best_epoch :])
    assert mse(result.model, val) == pytest.approx(min(losses), rel=1e-6)


def test_runs_to_max_epochs_without_early_stop():
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    result = train_cae(build_model(6, 2, 0), data, data, max_epochs=3, patience=10, batch_size=16, progress=False)
    assert len(result.history) == 3 and not result.stopped_early


def train_small(seed):
    torch.manual_seed(123)  # the global state must not matter
    data = torch.randn(96, 12, generator=torch.Generator().manual_seed(7))
    result = train_cae(build_model(12, 3, seed), data[:64], data[64:], max_epochs=3, batch_size=16, seed=seed, progress=False)
    return result.model.state_dict(), result.history


def test_training_is_deterministic_on_cpu_for_a_fixed_seed():
    state_a, history_a = train_small(0)
    state_b, history_b = train_small(0)
    state_c, _ = train_small(1)
    assert all(torch.equal(state_a[name], state_b[name]) for name in state_a)
    assert history_a == [dict(row, seconds=b["seconds"]) for row, b in zip(history_b, history_a)]
    assert not all(torch.equal(state_a[name], state_c[name]) for name in state_a)


def test_explained_variance_and_step_distances_match_loops():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(7, 4, 5))
    recon = states + rng.normal(scale=0.3, size=states.shape)
    ev = explained_variance_per_sublayer(states, recon)
    for s in range(4):
        residual = sum(np.sum((states[i, s] - recon[i, s]) ** 2) for i in range(7))
        mean = states[:, s].mean(axis=0)
        total = sum(np.sum((states[i, s] - mean) ** 2) for i in range(7))
        assert ev[s] == pytest.approx(1 - residual / total)
    pooled_mean = states.reshape(-1, 5).mean(axis=0)
    ev_pooled = explained_variance_per_sublayer(states, recon, pooled_mean)
    for s in range(4):
        residual = sum(np.sum((states[i, s] - recon[i, s]) ** 2) for i in range(7))
        total = sum(np.sum((states[i, s] - pooled_mean) ** 2) for i in range(7))
        assert ev_pooled[s] == pytest.approx(1 - residual / total)
    embedding = rng.normal(size=(7, 4, 2))
    distances = step_distances(embedding)
    for i in range(7):
        for s in range(3):
            assert distances[i, s] == pytest.approx(np.hypot(*(embedding[i, s + 1] - embedding[i, s])))


SETTINGS = {
    "n_layers": 3, "lr": 1e-3, "max_epochs": 2, "patience": 10, "batch_size": 32, "grad_clip": 1.0, "warmup_epochs": 1,
    "val_fraction": 0.2, "test_fraction": 0.2, "device": "cpu", "seed": 0, "condition": "original", "input_scaling": "unit",
    "seeds": [0, 1],
}


def make_store(path, n=10, n_layers=2, d=16):
    rng = np.random.default_rng(0)
    states = np.cumsum(rng.normal(size=(n, 2 * n_layers, d)), axis=1).astype(np.float32)
    write_group(path, {"original": states}, attrs={"model_name": "synthetic", "sublayer_names": [f"S{s}" for s in range(2 * n_layers)]})
    return states


def test_run_cae_writes_every_output(tmp_path):
    store = tmp_path / "activations.zarr"
    states = make_store(store)
    out = tmp_path / "cae"
    info = run_cae(store, out, SETTINGS, threads=1)
    assert sorted(p.name for p in out.iterdir()) == ["embedding.zarr", "model.safetensors", "training.json", "training_curve.csv"]
    arrays = read_group(out / "embedding.zarr")
    n_test = info["n_sequences"]["test"]
    assert info["seeds"] == [0, 1] and arrays["training_seeds"].tolist() == [0, 1]
    assert arrays["embedding"].shape == (2, n_test, 4, 2) and arrays["reconstruction_sse"].shape == (2, n_test, 4)
    assert arrays["ev_per_sublayer"].shape == (2, 4) and arrays["step_distance"].shape == (2, 3)
    assert arrays["mean_predictor_sse"].shape == (n_test, 4) and arrays["step_distance_per_sequence"].shape == (2, n_test, 3)
    test = states[arrays["test_sequences"]].astype(np.float64)
    np.testing.assert_allclose(arrays["test_variance_per_sublayer"], [test[:, s].var(axis=0).mean() for s in range(4)], rtol=1e-5)
    np.testing.assert_allclose(arrays["test_r2_pooled"], info["test_r2_pooled"])
    for k in range(2):
        assert info["test_r2_pooled"][k] == pytest.approx(1 - info["test_loss"][k] / test.reshape(-1, 16).var(axis=0).mean(), rel=1e-5)
    assert json.loads((out / "training.json").read_text())["epochs_run"] == [2, 2]
    for k in range(2):
        model = load_cae(out, k)
        with torch.no_grad():
            again = model.encode(torch.from_numpy(states[arrays["test_sequences"]])).numpy()
        np.testing.assert_allclose(again, arrays["embedding"][k], rtol=1e-5, atol=1e-5)
    train_rows = np.setdiff1d(np.arange(10), np.concatenate([arrays["test_sequences"], split_by_sequence(10, 0.2, 0.2, 0)["val"]]))
    np.testing.assert_allclose(arrays["train_sublayer_mean"], states[train_rows].astype(np.float64).mean(axis=0), rtol=1e-10, atol=1e-10)
    lines = (out / "training_curve.csv").read_text().splitlines()
    assert lines[0] == "seed,epoch,train_loss,val_loss,grad_norm_max,lr,seconds" and len(lines) == 1 + 2 * 2


def test_run_cae_rejects_bad_settings_before_writing(tmp_path):
    store = tmp_path / "activations.zarr"
    make_store(store, n=2)
    out = tmp_path / "cae"
    with pytest.raises(ValueError, match="training sequence"):
        run_cae(store, out, dict(SETTINGS, val_fraction=0.4, test_fraction=0.4))
    with pytest.raises(ValueError, match="no 'shuffled' array"):
        run_cae(store, out, dict(SETTINGS, condition="shuffled"))
    with pytest.raises(ValueError, match="input_scaling"):
        run_cae(store, out, dict(SETTINGS, input_scaling="robust"))
    with pytest.raises(ValueError, match="grad_clip"):
        run_cae(store, out, dict(SETTINGS, grad_clip=-1.0))
    with pytest.raises(ValueError, match="warmup_epochs"):
        run_cae(store, out, dict(SETTINGS, warmup_epochs=-2))
    assert not out.exists()


def test_summary_rows_follow_their_definitions():
    from test_cae_metrics import full_arrays, synthetic

    from rsdyn.cae.summary import summary_fig3

    states, recon, embedding, train_mean = synthetic(n=20, n_sublayers=8)
    arrays = full_arrays(states, recon, embedding, train_mean)
    rows = summary_fig3(arrays, n_resamples=20, seed=0)
    block = np.mean([explained_variance_block(states, y) for y in recon], axis=0)
    assert rows["cae_ev_block_early"]["value"] == pytest.approx(np.median(block[:2]))
    assert rows["cae_ev_block_late"]["value"] == pytest.approx(np.median(block[6:]))
    across = np.mean([[1 - ((states[:, s] - y[:, s]) ** 2).sum() / ((states[:, s] - train_mean[s]) ** 2).sum() for s in range(8)] for y in recon], axis=0)
    assert rows["cae_ev_across_early"]["value"] == pytest.approx(np.median(across[:3]))  # thirds: ceil(8 / 3) = 3
    assert rows["cae_ev_across_late"]["value"] == pytest.approx(np.median(across[5:]))
    assert rows["cae_ev_across_minus_mean_predictor"]["value"] == pytest.approx(np.median(across))
    assert rows["cae_sublayers_beating_mean_predictor"]["value"] == pytest.approx(np.mean(across > 0))
    own = arrays["ev_per_sublayer"].mean(axis=0)
    assert rows["cae_ev_own_mean_early"]["value"] == pytest.approx(np.median(own[:2]))
    assert rows["cae_ev_own_mean_late"]["value"] == pytest.approx(np.median(own[6:]))
    steps = step_distances(embedding).mean(axis=1)  # (S, 7) over test sequences
    assert rows["cae_step_distance_late_over_early"]["value"] == pytest.approx(np.mean(steps[:, 5:].mean(axis=1) / steps[:, :2].mean(axis=1)))
    assert rows["cae_test_r2_pooled"]["value"] == pytest.approx(arrays["test_r2_pooled"].mean())
    plain = {"cae_ev_block_early", "cae_ev_block_late", "cae_sublayers_beating_mean_predictor", "cae_ev_own_mean_early", "cae_ev_own_mean_late",
             "cae_ev_pooled_reference_early", "cae_ev_pooled_reference_late", "cae_test_r2_pooled"}
    assert all(set(row) == {"value", "paper", "definition"} for name, row in rows.items() if name in plain)
    assert all("verdict" in row for name, row in rows.items() if name not in plain)


def test_summary_skips_sublayers_of_negligible_variance():
    from test_cae_metrics import full_arrays, synthetic

    from rsdyn.cae.summary import summary_fig3

    arrays = full_arrays(*synthetic(n=20, n_sublayers=8))
    arrays["ev_per_sublayer"][:, 0] = -70.0
    arrays["test_variance_per_sublayer"] = np.array([1e-4, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 5.0])  # the first is below 1e-3 x mean
    rows = summary_fig3(arrays, n_resamples=20, seed=0)
    assert rows["cae_ev_own_mean_early"]["value"] == pytest.approx(arrays["ev_per_sublayer"][:, 1].mean())  # only sublayer 1 counts
    pooled = arrays["ev_per_sublayer_pooled_reference"].mean(axis=0)
    assert rows["cae_ev_pooled_reference_early"]["value"] == pytest.approx(np.median(pooled[:2]))
    assert rows["cae_ev_pooled_reference_late"]["value"] == pytest.approx(np.median(pooled[6:]))
    assert "0.001" in rows["cae_ev_own_mean_early"]["definition"]


def test_sublayers_with_variance_matches_a_loop():
    from rsdyn.cae.metrics import sublayers_with_variance

    variance = np.random.default_rng(0).uniform(0, 1, 20) ** 8
    mask = sublayers_with_variance(variance, relative=0.05)
    mean = sum(variance) / len(variance)
    assert mask.tolist() == [v >= 0.05 * mean for v in variance]


def test_fig3_is_written(tmp_path):
    from rsdyn.cae.figure import save_fig3

    store = tmp_path / "activations.zarr"
    make_store(store)
    run_cae(store, tmp_path / "cae", SETTINGS, threads=1)
    pdf, png = tmp_path / "figures" / "fig3.pdf", tmp_path / "figures" / "fig3.png"
    save_fig3(tmp_path / "cae", pdf, png, dpi=60)
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in pdf.parent.iterdir()) == ["fig3.pdf", "fig3.png"]  # no temporaries left


def test_panel_d_draws_the_block_variance_curve_and_grey_references():
    import matplotlib.pyplot as plt

    from rsdyn.cae.figure import draw_cae_explained_variance

    block = np.array([-8.9, -4.0, 0.56, 0.83])
    own = np.array([-70.0, 0.1, 0.2, 0.3])
    figure, ax = plt.subplots()
    draw_cae_explained_variance(ax, block, None, own, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1e-6, 1.0, 1.0, 1.0]))
    lines = {line.get_label(): line for line in ax.lines}
    primary = lines["1 - var(X - Y) / var(X), block of sublayer"]
    np.testing.assert_allclose(primary.get_ydata(), np.maximum(block, -1.0))  # clipped at -1 ...
    assert primary.get_color() == "black"
    assert any(c.get_label() == "< -1" and len(c.get_offsets()) == 2 for c in ax.collections)  # ... and marked
    own_line = lines["reference: vs each unit's sublayer mean"]
    assert np.isnan(own_line.get_ydata()[0]) and np.allclose(own_line.get_ydata()[1:], own[1:])
    crosses = [c for c in ax.collections if c.get_label().startswith("variance <")]
    assert len(crosses) == 1 and crosses[0].get_offsets().tolist() == [[0.0, 0.0]]
    assert crosses[0].get_offset_transform() == ax.get_xaxis_transform()  # on the x axis, not at R^2 = 0
    assert "reference: vs pooled mean" in lines
    assert ax.get_ylim()[0] == pytest.approx(-1.15)  # room for the crosses below the floor at -1
    plt.close(figure)
