"""Compressing autoencoder: architecture, split, early stopping, determinism, outputs."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from rsdyn.cae import (
    CompressingAutoencoder,
    build_model,
    explained_variance_per_sublayer,
    layer_widths,
    load_cae,
    mse,
    run_cae,
    split_by_sequence,
    step_distances,
    train_cae,
)
from rsdyn.store import read_group, write_group


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


def test_input_scaling_is_one_mean_and_one_scalar():
    data = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2, 3, 50, 5, 6]) + 7
    model = build_model(6, 3, seed=0)
    model.set_input_scaling(data)
    expected = data.double().numpy()
    np.testing.assert_allclose(model.input_mean.numpy(), expected.mean(axis=0), rtol=1e-6)
    assert model.input_scale.item() == pytest.approx(np.sqrt(np.mean((expected - expected.mean(axis=0)) ** 2)), rel=1e-6)
    shifted = build_model(6, 3, seed=0)  # an affine change of units leaves the embedding unchanged
    shifted.set_input_scaling(data * 4 - 3)
    with torch.no_grad():
        torch.testing.assert_close(shifted.encode(data * 4 - 3), model.encode(data), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(shifted(data * 4 - 3), model(data) * 4 - 3, rtol=1e-4, atol=1e-3)


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
    "n_layers": 3, "lr": 1e-3, "max_epochs": 2, "patience": 10, "batch_size": 32,
    "val_fraction": 0.2, "test_fraction": 0.2, "device": "cpu", "seed": 0, "condition": "original",
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
    assert arrays["embedding"].shape == (n_test, 4, 2)
    assert arrays["ev_per_sublayer"].shape == (4,) and arrays["step_distance"].shape == (3,)
    assert json.loads((out / "training.json").read_text())["epochs_run"] == 2
    model = load_cae(out)
    with torch.no_grad():
        again = model.encode(torch.from_numpy(states[arrays["test_sequences"]])).numpy()
    np.testing.assert_allclose(again, arrays["embedding"], rtol=1e-5, atol=1e-5)
    assert len((out / "training_curve.csv").read_text().splitlines()) == 3


def test_run_cae_rejects_bad_settings_before_writing(tmp_path):
    store = tmp_path / "activations.zarr"
    make_store(store, n=2)
    out = tmp_path / "cae"
    with pytest.raises(ValueError, match="training sequence"):
        run_cae(store, out, dict(SETTINGS, val_fraction=0.4, test_fraction=0.4))
    with pytest.raises(ValueError, match="no 'shuffled' array"):
        run_cae(store, out, dict(SETTINGS, condition="shuffled"))
    assert not out.exists()


def test_summary_rows_follow_their_definitions():
    from rsdyn.cae import summary_fig3

    ev = np.linspace(0, 1, 8)
    steps = np.arange(1.0, 8.0)
    rows = summary_fig3({"ev_per_sublayer": ev, "step_distance": steps})
    assert rows["cae_ev_early"]["value"] == pytest.approx(np.median(ev[:2]))
    assert rows["cae_ev_late"]["value"] == pytest.approx(np.median(ev[6:]))
    assert rows["cae_step_distance_late_over_early"]["value"] == pytest.approx(steps[5:].mean() / steps[:2].mean())
    assert all(set(row) == {"value", "paper", "definition"} for row in rows.values())


def test_fig3_is_written(tmp_path):
    from rsdyn.plots.fig3 import save_fig3

    store = tmp_path / "activations.zarr"
    make_store(store)
    run_cae(store, tmp_path / "cae", SETTINGS, threads=1)
    pdf, png = tmp_path / "figures" / "fig3.pdf", tmp_path / "figures" / "fig3.png"
    save_fig3(tmp_path / "cae", pdf, png, dpi=60)
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in pdf.parent.iterdir()) == ["fig3.pdf", "fig3.png"]  # no temporaries left
