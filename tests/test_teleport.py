"""Teleportation: grid and projection helpers against loops, the batched prefix-reuse path
against one full forward per point on tiny random Llama and Gemma3 models, validation."""

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from rsdyn.adapters import decoder_layers
from rsdyn.store import read_group, write_group
from rsdyn.teleport import (
    TeleportError,
    check_basis,
    control_states,
    data_range,
    gather_layers,
    grid_points,
    mse_to_control,
    naive_states,
    naive_teleport,
    project_pc12,
    teleport_layer,
    teleported_states,
    to_residual,
    validate_teleport,
    summary_teleport,
)

N_LAYERS, D_MODEL, VOCAB = 4, 32, 64
PROMPT = "I'm sorry, Dave."


class CharTokenizer:
    """Character-level stand-in for a HF tokenizer (what corpus.tokenize calls)."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, texts, add_special_tokens=False):  # noqa: ARG002 - HF signature
        return {"input_ids": [[3 + ord(c) % (VOCAB - 3) for c in text] for text in texts]}


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma3():
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"] * (N_LAYERS // 2),
    )
    return Gemma3ForCausalLM(config).eval()


MODELS = {"llama": tiny_llama, "gemma3": tiny_gemma3}


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    """(model, prompt ids, mean, orthonormal components, grid points scaled to the activations)."""
    model = MODELS[request.param]()
    ids = validate_teleport({"layers": [0], "prompt": PROMPT}, N_LAYERS, CharTokenizer())
    control = control_states(model, ids).numpy()
    rng = np.random.default_rng(1)
    components = np.linalg.qr(rng.standard_normal((D_MODEL, 3)))[0].T
    mean = control.mean(axis=0)
    scale = np.abs(project_pc12(control, mean, components)).max()
    points = grid_points((-2 * scale, 2 * scale), 3)
    return model, ids, mean, components, points


def tolerance(*states):
    """1e-5 relative to the largest activation (float32 sums of order-|h| terms)."""
    return 1e-5 * max(1.0, max(float(np.abs(np.asarray(s)).max()) for s in states))


# ------------------------------------------------------------------ helpers vs loops


def test_grid_points_match_a_double_loop():
    points = grid_points((-1.5, 2.0), 4)
    axis = [-1.5 + k * 3.5 / 3 for k in range(4)]
    expected = [(axis[j], axis[i]) for i in range(4) for j in range(4)]
    np.testing.assert_allclose(points, expected, rtol=0, atol=1e-12)


def test_data_range_adds_the_margin_on_both_sides():
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(7, 6, 2))
    low, high = min(projection.ravel()), max(projection.ravel())
    assert data_range(projection, 0.1) == pytest.approx((low - 0.1 * (high - low), high + 0.1 * (high - low)))
    assert data_range(projection, 0.0) == pytest.approx((low, high))


def test_residual_round_trip_and_mse_against_loops():
    rng = np.random.default_rng(2)
    components = np.linalg.qr(rng.standard_normal((10, 4)))[0].T
    mean = rng.normal(size=10)
    points = rng.normal(size=(5, 2))
    np.testing.assert_allclose(project_pc12(to_residual(points, mean, components), mean, components), points, atol=1e-12)
    trajectories, control, layer = rng.normal(size=(5, 4, 2)), rng.normal(size=(6, 2)), 1
    expected = [
        np.mean([sum((trajectories[p, s, k] - control[2 * layer + s, k]) ** 2 for k in range(2)) for s in range(4)])
        for p in range(5)
    ]
    np.testing.assert_allclose(mse_to_control(trajectories, control, layer), expected, rtol=1e-12)


# ------------------------------------------------------------------ model paths


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_prefix_reuse_equals_one_full_forward_per_point(setup, layer):
    model, ids, mean, components, points = setup
    residual = to_residual(points, mean, components)
    batched = teleported_states(model, ids, layer, residual).numpy()
    naive = naive_states(model, ids, layer, residual).numpy()
    assert batched.shape == (len(points), 2 * (N_LAYERS - layer), D_MODEL)
    np.testing.assert_allclose(batched, naive, rtol=0, atol=tolerance(naive))
    # sublayer 2l is the injected state itself
    np.testing.assert_allclose(batched[:, 0], residual, rtol=0, atol=tolerance(residual))


@pytest.mark.parametrize("layer", [0, 2, N_LAYERS - 1])
def test_teleporting_the_controls_own_state_reproduces_the_control(setup, layer):
    model, ids, _, _, _ = setup
    control = control_states(model, ids).numpy()
    own = teleported_states(model, ids, layer, control[2 * layer][None]).numpy()
    np.testing.assert_allclose(own[0], control[2 * layer :], rtol=0, atol=tolerance(control))


def test_teleport_layer_output_matches_the_naive_reference(setup):
    model, ids, mean, components, points = setup
    layer = 1
    fast = teleport_layer(model, ids, layer, points, mean, components)
    slow = naive_teleport(model, ids, layer, points, mean, components)
    assert fast["trajectories"].shape == (len(points), 2 * (N_LAYERS - layer), 2)
    assert fast["control"].shape == (2 * N_LAYERS, 2)
    for name in ("grid_points", "trajectories", "control", "mse_to_control"):
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-4, atol=tolerance(slow["trajectories"]))
    np.testing.assert_allclose(
        fast["mse_to_control"], mse_to_control(fast["trajectories"], fast["control"], layer), rtol=1e-5
    )


def test_model_is_restored_after_teleport_even_on_error(setup):
    model, ids, mean, components, points = setup
    before = control_states(model, ids)
    teleport_layer(model, ids, 2, points, mean, components)
    with pytest.raises(RuntimeError):
        teleported_states(model, ids, 2, np.zeros((2, D_MODEL + 1)))  # wrong width fails inside the forward
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(model))
    torch.testing.assert_close(control_states(model, ids), before, rtol=0, atol=0)


# ------------------------------------------------------------------ bad input


def test_layer_beyond_the_model_names_its_layer_count():
    with pytest.raises(TeleportError, match=r"has 4 layers.*0\.\.3"):
        validate_teleport({"layers": [0, 4], "prompt": PROMPT}, N_LAYERS, CharTokenizer())
    with pytest.raises(TeleportError, match="has 30 layers"):
        validate_teleport({"layers": [0, 7, 15, 23, 31], "prompt": PROMPT}, 30, CharTokenizer())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid_n": 1}, "grid_n"),
        ({"range": [1.0, 1.0]}, "empty"),
        ({"range": [2.0, -1.0]}, "empty"),
        ({"prompt": ""}, "no tokens"),
        ({"arrow_sublayers": 0}, "arrow_sublayers"),
        ({"margin": -0.1}, "margin"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(change, message):
    settings = {"layers": [0], "grid_n": 10, "range": None, "margin": 0.1, "prompt": PROMPT, "arrow_sublayers": 12}
    with pytest.raises(TeleportError, match=message):
        validate_teleport({**settings, **change}, N_LAYERS, CharTokenizer())


def test_bad_grid_and_basis_fail_before_compute():
    with pytest.raises(TeleportError, match="grid_n"):
        grid_points((0, 1), 1)
    with pytest.raises(TeleportError, match="empty"):
        grid_points((0, 0), 3)
    with pytest.raises(TeleportError, match="empty range"):
        data_range(np.ones((3, 4, 2)), 0.1)
    with pytest.raises(TeleportError, match="32 units"):
        check_basis(np.zeros(16), np.zeros((2, 16)), D_MODEL)


def test_out_of_range_layer_fails_in_the_model_path(setup):
    model, ids, mean, components, points = setup
    with pytest.raises(TeleportError, match="has 4 layers"):
        teleport_layer(model, ids, N_LAYERS, points, mean, components)
    with pytest.raises(ValueError, match="Unknown model family 'gpt2'"):
        teleport_layer(model, ids, 0, points, mean, components, family="gpt2")


# ------------------------------------------------------------------ gather and summary


def fake_group(layer, rng, offset):
    steps = 2 * (N_LAYERS - layer)
    control = rng.normal(size=(2 * N_LAYERS, 2))
    trajectories = control[2 * layer :] + offset * rng.normal(size=(4, steps, 2))
    return {
        "grid_points": rng.normal(size=(4, 2)),
        "trajectories": trajectories,
        "control": control,
        "mse_to_control": mse_to_control(trajectories, control, layer),
    }


def test_gather_and_summary(tmp_path):
    rng = np.random.default_rng(3)
    groups = {0: fake_group(0, rng, 3.0), 2: fake_group(2, rng, 0.1), 3: fake_group(3, rng, 2.0)}
    paths = {}
    for layer, arrays in groups.items():
        paths[layer] = write_group(tmp_path / f"layer_{layer}.zarr", arrays, attrs={"layer": layer})
    gathered = gather_layers(paths)
    write_group(tmp_path / "teleport.zarr", gathered)
    back = read_group(tmp_path / "teleport.zarr")
    assert sorted(back) == ["layer_0", "layer_2", "layer_3"]
    np.testing.assert_array_equal(back["layer_2"]["trajectories"], groups[2]["trajectories"])
    rows = summary_teleport({int(k.split("_")[1]): v for k, v in back.items()})
    for row in rows.values():
        assert set(row) == {"value", "paper", "definition"}
    mse = rows["teleport_mse_per_layer"]["value"]
    assert mse["2"] == pytest.approx(np.mean(groups[2]["mse_to_control"]))
    assert rows["teleport_best_layers"]["value"] == sorted(groups, key=lambda l: np.mean(groups[l]["mse_to_control"]))
    assert rows["teleport_best_layers"]["value"][0] == 2
    assert rows["teleport_best_is_intermediate"]["value"] is True
    final = np.mean(((groups[0]["trajectories"][:, -1] - groups[0]["control"][-1]) ** 2).sum(-1))
    assert rows["teleport_final_distance_per_layer"]["value"]["0"] == pytest.approx(final)


def test_verify_guard_raises_when_the_batched_states_are_wrong(setup):
    from rsdyn.teleport import verify_against_full_forward

    model, ids, mean, components, points = setup
    residual = to_residual(points[:1], mean, components)
    states = teleported_states(model, ids, 1, residual)
    assert verify_against_full_forward(model, ids, 1, residual, states) < 1e-4
    with pytest.raises(RuntimeError, match="differs from a full forward"):
        verify_against_full_forward(model, ids, 1, residual, states * 1.01 + 0.01)


def test_job_settings_leave_out_what_no_layer_depends_on():
    from rsdyn.teleport import job_settings

    settings = {"layers": [0, 7], "arrow_sublayers": 12, "grid_n": 10, "prompt": PROMPT}
    assert job_settings(settings) == {"grid_n": 10, "prompt": PROMPT}


def test_fig4_draws_panels_and_arrows(tmp_path):
    from rsdyn.plots.fig4 import arrow_vectors, save_fig4

    rng = np.random.default_rng(4)
    trajectories = rng.normal(size=(4, 6, 2))
    starts, moves = arrow_vectors(trajectories, 12)  # longer than recorded: last sublayer
    np.testing.assert_array_equal(starts, trajectories[:, 0])
    np.testing.assert_array_equal(moves, trajectories[:, 5] - trajectories[:, 0])
    _, moves = arrow_vectors(trajectories, 2)
    np.testing.assert_array_equal(moves, trajectories[:, 2] - trajectories[:, 0])

    n_samples, n_sublayers, k = 5, 2 * N_LAYERS, 3
    pca = {
        "projection": rng.normal(size=(n_samples, n_sublayers, 2)),
        "explained_variance_ratio": np.array([0.5, 0.3, 0.1]),
        "ev_per_sublayer_curve": rng.uniform(0, 1, size=(n_sublayers, k)),
        "ev_per_sublayer": rng.uniform(0, 1, size=n_sublayers),
        "mean": np.zeros(D_MODEL),
        "components": np.eye(k, D_MODEL),
    }
    write_group(tmp_path / "pca.zarr", pca, attrs={"sublayer_names": [f"s{i}" for i in range(n_sublayers)]})
    groups = {f"layer_{layer}": fake_group(layer, rng, 1.0) for layer in (0, 2, 3)}
    write_group(tmp_path / "teleport.zarr", groups)
    save_fig4(tmp_path / "pca.zarr", tmp_path / "teleport.zarr", tmp_path / "fig4.pdf", tmp_path / "fig4.png", 2, dpi=60)
    assert (tmp_path / "fig4.pdf").stat().st_size > 1000
    assert (tmp_path / "fig4.png").read_bytes()[:4] == b"\x89PNG"
