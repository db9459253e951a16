"""Teleportation: grid and projection helpers against loops, the batched prefix-reuse path
against one full forward per point on tiny random Llama and Gemma3 models, validation."""

import numpy as np
import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from rsdyn.core.store import read_group, write_group
from rsdyn.geometry.run import gather_layers
from rsdyn.geometry.settings import TeleportError
from rsdyn.geometry.teleport import (
    check_basis,
    naive_states,
    naive_teleport,
    project_pc12,
    teleport_layer,
    teleported_states,
    to_residual,
    validate_teleport,
)
from rsdyn.geometry.teleport_grid import (
    data_range,
    grid_for,
    grid_points,
    layer_data_range,
    sample_indices,
)
from rsdyn.geometry.teleport_metrics import (
    horizon,
    layer_metrics,
    mse_to_control,
    spread,
    summary_teleport,
    teleport_metrics,
)
from rsdyn.models.adapters import decoder_layers
from rsdyn.models.interventions import control_states

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


def test_per_axis_grid_and_per_layer_range_against_loops():
    points = grid_points([[-1.0, 1.0], [10.0, 16.0]], 3)
    expected = [(x, y) for y in (10.0, 13.0, 16.0) for x in (-1.0, 0.0, 1.0)]
    np.testing.assert_allclose(points, expected, rtol=0, atol=1e-12)
    rng = np.random.default_rng(5)
    projection = rng.normal(size=(9, 6, 2)) * [1.0, 30.0] + [5.0, -2.0]
    layer, sd = 2, 2.5
    got = layer_data_range(projection, layer, sd)
    for k in range(2):
        values = [projection[i, 2 * layer, k] for i in range(9)]
        centre = sum(values) / 9
        spread_k = (sum((v - centre) ** 2 for v in values) / 8) ** 0.5
        assert got[k] == pytest.approx([centre - sd * spread_k, centre + sd * spread_k], rel=1e-12)
    settings = {"range": "per_layer", "range_sd": sd, "grid_n": 4}
    np.testing.assert_allclose(grid_for(settings, projection, layer), grid_points(got, 4))
    around = layer_data_range(projection, layer, sd, centre=[1.0, -1.0])  # the stage centres it on the control
    np.testing.assert_allclose(around.mean(axis=1), [1.0, -1.0])
    np.testing.assert_allclose(around[:, 1] - around[:, 0], got[:, 1] - got[:, 0])
    pooled = grid_for({"range": None, "margin": 0.0, "grid_n": 4}, projection, layer)
    assert pooled.min() == pytest.approx(projection.min()) and pooled.max() == pytest.approx(projection.max())
    with pytest.raises(TeleportError, match="do not vary along PC2"):
        layer_data_range(np.stack([projection[..., 0], np.ones((9, 6))], axis=-1), layer, sd)


def test_sample_choice_is_seeded_and_bounded():
    first = sample_indices(50, 10, seed=3)
    np.testing.assert_array_equal(first, sample_indices(50, 10, seed=3))
    assert len(set(first)) == 10 and list(first) == sorted(first) and first.max() < 50
    assert not np.array_equal(first, sample_indices(50, 10, seed=4))
    with pytest.raises(TeleportError, match="exceeds the 5 sequences"):
        sample_indices(5, 6)


def test_residual_round_trip():
    rng = np.random.default_rng(2)
    components = np.linalg.qr(rng.standard_normal((10, 4)))[0].T
    mean = rng.normal(size=10)
    points = rng.normal(size=(5, 2))
    np.testing.assert_allclose(project_pc12(to_residual(points, mean, components), mean, components), points, atol=1e-12)


# ------------------------------------------------------------------ recovery metrics


def hand_made_trajectories():
    """Layer 1 of a 3-layer model (sublayers 2..5): the control moves right by 1 per sublayer.

    Point 0 starts 2 below the control and lands exactly on it after h = 2 sublayers;
    point 1 starts 3 above and stays where it is; point 2 starts 1 to the left and moves
    with the control (its offset is kept)."""
    control = np.zeros((6, 2))
    control[:, 0] = np.arange(6)
    onto = [control[2] + [0, -2], control[3] + [0, -1], control[4], control[5]]
    still = [control[2] + [0, 3]] * 4
    along = [control[s] + [-1, 0] for s in range(2, 6)]
    return np.array([onto, still, along]), control


def test_metrics_of_a_hand_made_trajectory_have_the_known_answers():
    trajectories, control = hand_made_trajectories()
    metrics = teleport_metrics(trajectories, control, layer=1, steps=2)
    # onto the control: ratio 0, pulled straight back (alignment 1)
    assert metrics["distance_ratio"][0] == 0.0 and metrics["alignment"][0] == pytest.approx(1.0)
    # standing still while the control moves 2 to the right: distance sqrt(4 + 9) / 3;
    # relative displacement (-2, 0), direction back (0, -3): orthogonal
    assert metrics["distance_ratio"][1] == pytest.approx(np.sqrt(13) / 3)
    assert metrics["alignment"][1] == pytest.approx(0.0, abs=1e-15)
    # moving with the control: same distance, no relative displacement (alignment undefined)
    assert metrics["distance_ratio"][2] == pytest.approx(1.0) and np.isnan(metrics["alignment"][2])
    # MSE over sublayers 3 and 4, not the injected sublayer 2
    assert metrics["mse_to_control"][0] == pytest.approx((1 + 0) / 2)
    assert metrics["mse_to_control"][1] == pytest.approx(((1 + 9) + (4 + 9)) / 2)
    assert metrics["mse_to_control"][2] == pytest.approx(1.0)
    start, end = trajectories[:, 0], trajectories[:, 2]
    assert metrics["spread_ratio"] == pytest.approx(spread(end) / spread(start))


def test_metrics_match_a_loop_over_points():
    rng = np.random.default_rng(11)
    layer, n_sublayers, steps = 2, 12, 3
    control = rng.normal(size=(n_sublayers, 2)) * 5
    trajectories = rng.normal(size=(7, n_sublayers - 2 * layer, 2)) * 5
    metrics = teleport_metrics(trajectories, control, layer, steps)
    first = 2 * layer
    for p in range(7):
        start, end = trajectories[p, 0], trajectories[p, steps]
        d0 = np.hypot(*(start - control[first]))
        dh = np.hypot(*(end - control[first + steps]))
        assert metrics["distance_ratio"][p] == pytest.approx(dh / d0, rel=1e-12)
        moved = (end - start) - (control[first + steps] - control[first])
        back = control[first] - start
        cosine = (moved[0] * back[0] + moved[1] * back[1]) / (np.hypot(*moved) * np.hypot(*back))
        assert metrics["alignment"][p] == pytest.approx(cosine, rel=1e-12, abs=1e-15)
        squares = [sum((trajectories[p, s, k] - control[first + s, k]) ** 2 for k in range(2)) for s in range(1, steps + 1)]
        assert metrics["mse_to_control"][p] == pytest.approx(sum(squares) / steps, rel=1e-12)

    def variance(points):
        centre = [sum(point[k] for point in points) / len(points) for k in range(2)]
        return sum((point[0] - centre[0]) ** 2 + (point[1] - centre[1]) ** 2 for point in points) / len(points)

    assert metrics["spread_ratio"] == pytest.approx(variance(trajectories[:, steps]) / variance(trajectories[:, 0]), rel=1e-12)
    np.testing.assert_allclose(mse_to_control(trajectories, control, layer, steps), metrics["mse_to_control"])


def test_scaled_metrics_divide_positions_by_the_data_spread():
    """An offset that grows with the spread of the corpus states has raw distance ratio
    sigma_{2l+h} / sigma_{2l} and points away from the control, but scaled ratio 1."""
    layer, steps = 1, 2
    sigma = np.array([1.0, 1.0, 2.0, 3.0, 8.0, 9.0])
    control = np.stack([np.arange(6.0), np.zeros(6)], axis=1)
    offset = np.array([0.0, 1.0])
    trajectories = np.array([[control[s] + offset * sigma[s] for s in range(2, 6)]])
    raw = teleport_metrics(trajectories, control, layer, steps)
    scaled = teleport_metrics(trajectories, control, layer, steps, data_spread=sigma)
    assert raw["distance_ratio"][0] == pytest.approx(8.0 / 2.0) and raw["alignment"][0] == pytest.approx(-1.0)
    assert scaled["distance_ratio"][0] == pytest.approx(1.0) and np.isnan(scaled["alignment"][0])
    rng = np.random.default_rng(14)
    trajectories = rng.normal(size=(5, 4, 2))
    by_hand = teleport_metrics(trajectories / sigma[2:, None], control / sigma[:, None], layer, steps)
    for name, value in teleport_metrics(trajectories, control, layer, steps, sigma).items():
        np.testing.assert_allclose(value, by_hand[name], rtol=1e-12)
    projection = rng.normal(size=(7, 6, 2))
    from rsdyn.geometry.teleport_metrics import data_spread

    np.testing.assert_allclose(data_spread(projection), [np.sqrt(np.var(projection[:, s, 0], ddof=1) + np.var(projection[:, s, 1], ddof=1)) for s in range(6)])


def test_horizon_is_clipped_to_what_remains():
    assert horizon(0, 60, 12) == 12
    assert horizon(23, 60, 12) == 12  # 46 + 12 = 58 <= 59
    assert horizon(25, 60, 12) == 9  # 50 + 9 = 59, the last sublayer
    assert horizon(29, 60, 12) == 1
    with pytest.raises(ValueError, match="arrow_sublayers"):
        horizon(0, 60, 0)


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
    for name in ("grid_points", "trajectories", "control"):
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-4, atol=tolerance(slow["trajectories"]))


def test_sample_control_trajectories_equal_full_forwards_of_those_states(setup):
    model, ids, mean, components, points = setup
    layer = 1
    rng = np.random.default_rng(12)
    control = control_states(model, ids).numpy()
    samples = control[2 * layer] + rng.normal(size=(3, D_MODEL)) * np.abs(control[2 * layer]).max()
    samples[0] = control[2 * layer]  # the control's own state: the control's trajectory
    arrays = teleport_layer(model, ids, layer, points, mean, components, sample_states=samples)
    assert arrays["trajectories"].shape[0] == len(points)
    assert arrays["sample_trajectories"].shape == (3, 2 * (N_LAYERS - layer), 2)
    reference = project_pc12(naive_states(model, ids, layer, samples).numpy(), mean, components)
    np.testing.assert_allclose(arrays["sample_trajectories"], reference, rtol=1e-4, atol=tolerance(reference))
    np.testing.assert_allclose(arrays["sample_trajectories"][0], arrays["control"][2 * layer :], rtol=1e-4, atol=tolerance(reference))
    grid_only = teleport_layer(model, ids, layer, points, mean, components)
    np.testing.assert_allclose(arrays["trajectories"], grid_only["trajectories"], rtol=1e-5, atol=tolerance(reference))


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
        ({"range": "per_layer", "range_sd": 0}, "range_sd"),
        ({"range": "pooled"}, "per_layer"),
        ({"sample_control": -1}, "sample_control"),
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


def fake_group(layer, rng, pull, n_points=30, samples=0):
    """Raw arrays of one layer: points scattered around the control at 2l, each offset
    shrinking by the factor ``pull`` per sublayer (below 1: recovery, above 1: divergence)."""
    steps = 2 * (N_LAYERS - layer)
    control = rng.normal(size=(2 * N_LAYERS, 2))

    def trajectories(count):
        offsets = rng.normal(size=(count, 1, 2)) * 3 * pull ** np.arange(steps)[None, :, None]
        return control[2 * layer :] + offsets * rng.uniform(0.8, 1.2, (count, steps, 1))

    group = {
        "grid_points": rng.normal(size=(n_points, 2)), "trajectories": trajectories(n_points), "control": control,
        "data_spread": np.linspace(1.0, 2.0, 2 * N_LAYERS),
    }
    if samples:
        group["sample_trajectories"] = trajectories(samples)
    return group


def test_gather_adds_the_metrics_over_the_horizon(tmp_path):
    rng = np.random.default_rng(3)
    groups = {0: fake_group(0, rng, 1.5), 2: fake_group(2, rng, 0.5, samples=5), 3: fake_group(3, rng, 1.2)}
    paths = {layer: write_group(tmp_path / f"layer_{layer}.zarr", arrays, attrs={"layer": layer}) for layer, arrays in groups.items()}
    write_group(tmp_path / "teleport.zarr", gather_layers(paths, arrow_sublayers=3))
    back = read_group(tmp_path / "teleport.zarr")
    assert sorted(back) == ["layer_0", "layer_2", "layer_3"]
    np.testing.assert_array_equal(back["layer_2"]["trajectories"], groups[2]["trajectories"].astype(np.float64))
    assert int(back["layer_0"]["horizon"]) == 3 and int(back["layer_3"]["horizon"]) == 1  # 2L - 1 - 6 = 1 remains
    expected = teleport_metrics(groups[2]["trajectories"], groups[2]["control"], 2, 3)
    for name in ("distance_ratio", "alignment", "mse_to_control", "spread_ratio"):
        np.testing.assert_allclose(back["layer_2"][name], expected[name], rtol=1e-6)
    assert back["layer_2"]["sample_distance_ratio"].shape == (5,) and "sample_distance_ratio" not in back["layer_0"]


def metric_groups(pulls, samples=0, seed=3):
    rng = np.random.default_rng(seed)
    groups = {layer: fake_group(layer, rng, pull, samples=samples) for layer, pull in pulls.items()}
    for layer, group in groups.items():
        group.update(layer_metrics(group, layer, 2))
    return groups


def test_summary_rows_rank_layers_and_compare_mid_with_ends():
    groups = metric_groups({0: 1.3, 1: 0.4, 2: 0.6, 3: 1.4}, samples=12)
    rows = summary_teleport(groups, n_resamples=50, seed=1)
    ratio = rows["teleport_distance_ratio_per_layer"]
    for layer in groups:
        assert ratio["value"][str(layer)] == pytest.approx(np.nanmedian(groups[layer]["distance_ratio"]), rel=1e-6)
        low, high = ratio["intervals"][str(layer)]
        assert low <= ratio["value"][str(layer)] <= high
    assert "grid points" in ratio["resampled"]
    assert rows["teleport_best_layers"]["value"][0] in (1, 2) and rows["teleport_best_layers"]["value"][-1] in (0, 3)
    assert rows["teleport_best_is_intermediate"]["value"] is True
    assert sum(rows["teleport_best_layers"]["first_fraction"].values()) == pytest.approx(1.0)
    mse = rows["teleport_mse_per_layer"]["value"]
    assert mse["1"] == pytest.approx(np.mean(groups[1]["mse_to_control"]), rel=1e-6)
    for name in ("teleport_distance_ratio_mid_over_ends", "teleport_spread_ratio_mid_over_ends", "teleport_sample_distance_ratio_mid_over_ends"):
        row = rows[name]
        assert row["verdict"] == "reproduced", name
        assert set(row["pairs"]) == {"1 vs 0", "1 vs 3", "2 vs 0", "2 vs 3"}
    medians = [np.nanmedian(groups[layer]["distance_ratio"]) for layer in (1, 2, 0, 3)]
    expected = np.sqrt(medians[0] * medians[1]) / np.sqrt(medians[2] * medians[3])
    assert rows["teleport_distance_ratio_mid_over_ends"]["value"] == pytest.approx(expected, rel=1e-6)
    assert rows["teleport_alignment_mid_minus_ends"]["verdict"] == "reproduced"
    assert "corpus samples" in rows["teleport_sample_alignment_per_layer"]["resampled"]
    scaled = rows["teleport_scaled_distance_ratio_per_layer"]["value"]
    assert scaled["2"] == pytest.approx(np.nanmedian(groups[2]["scaled_distance_ratio"]), rel=1e-6)
    assert {"teleport_scaled_spread_ratio_mid_over_ends", "teleport_sample_scaled_alignment_mid_minus_ends"} <= set(rows)
    assert "teleport_scaled_mse_per_layer" not in rows
    final = np.mean(((groups[0]["trajectories"][:, -1] - groups[0]["control"][-1]) ** 2).sum(-1))
    assert rows["teleport_final_distance_per_layer"]["value"]["0"] == pytest.approx(final)


def test_summary_verdict_flips_when_the_ends_recover_better():
    rows = summary_teleport(metric_groups({0: 0.4, 1: 1.3, 2: 1.4, 3: 0.5}), n_resamples=50)
    assert rows["teleport_distance_ratio_mid_over_ends"]["verdict"] == "opposite"
    assert rows["teleport_best_is_intermediate"]["value"] is False
    two_layers = summary_teleport(metric_groups({0: 0.4, 3: 1.3}), n_resamples=10)
    assert "teleport_distance_ratio_mid_over_ends" not in two_layers and "teleport_best_layers" in two_layers


def test_verify_guard_raises_when_the_batched_states_are_wrong(setup):
    from rsdyn.geometry.teleport import verify_against_full_forward

    model, ids, mean, components, points = setup
    residual = to_residual(points[:1], mean, components)
    states = teleported_states(model, ids, 1, residual)
    assert verify_against_full_forward(model, ids, 1, residual, states) < 1e-4
    with pytest.raises(RuntimeError, match="differs from a full forward"):
        verify_against_full_forward(model, ids, 1, residual, states * 1.01 + 0.01)


def test_job_settings_leave_out_what_no_layer_depends_on():
    from rsdyn.geometry.settings import job_settings

    settings = {"layers": [0, 7], "arrow_sublayers": 12, "grid_n": 10, "prompt": PROMPT, "sample_control": 5}
    assert job_settings(settings) == {"grid_n": 10, "prompt": PROMPT, "sample_control": 5}


def test_fig4_draws_panels_and_arrows(tmp_path):
    from rsdyn.geometry.figure import arrow_vectors, save_fig4

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
        "ev_per_sublayer_curve": np.cumsum(rng.uniform(-2, 0.3, size=(n_sublayers, k)), axis=1),
        "ev_per_sublayer": rng.uniform(0, 1, size=n_sublayers),
        "n_components_90": np.array([-1, 3, 2, -1, 1, 2, 3, 3]),
        "spectrum_within": np.sort(rng.gamma(1.0, 1.0, (n_sublayers, n_samples)), axis=1)[:, ::-1],
        "participation_ratio": rng.uniform(1, 4, n_sublayers),
        "components_for_90_within": rng.integers(1, 5, n_sublayers),
        "mean": np.zeros(D_MODEL),
        "components": np.eye(k, D_MODEL),
    }
    write_group(tmp_path / "pca.zarr", pca, attrs={"sublayer_names": [f"s{i}" for i in range(n_sublayers)]})
    groups = metric_groups({0: 1.2, 2: 0.5, 3: 1.1}, samples=4)
    write_group(tmp_path / "teleport.zarr", {f"layer_{layer}": group for layer, group in groups.items()})
    save_fig4(tmp_path / "pca.zarr", tmp_path / "teleport.zarr", tmp_path / "fig4.pdf", tmp_path / "fig4.png", 2, dpi=60)
    assert (tmp_path / "fig4.pdf").stat().st_size > 1000
    assert (tmp_path / "fig4.png").read_bytes()[:4] == b"\x89PNG"


def test_fig4_panels_share_one_scale_and_arrows_one_length():
    import matplotlib.pyplot as plt

    from rsdyn.geometry.figure import ARROW_FRACTION, draw_teleport_panel, panel_frames

    groups = metric_groups({0: 1.2, 2: 0.5}, seed=4)
    for group in groups.values():
        group["grid_range"] = np.array([[-3.0, 3.0], [-3.0, 3.0]])
    frames, unit = panel_frames(groups)
    assert unit == "PC units" and all(np.array_equal(frame[1], [1, 1]) for frame in frames.values())
    groups[2]["grid_range"] = np.array([[10.0, 30.0], [-1.0, 1.0]])  # per-layer ranges: centred, in layer SD
    frames, unit = panel_frames(groups, range_sd=2.0)
    assert unit == "SD of the layer's states"
    centre, scale = frames[2]
    np.testing.assert_allclose((groups[2]["grid_range"] - centre[:, None]) / scale[:, None], [[-2, 2], [-2, 2]])
    figure, ax = plt.subplots()
    quiver = draw_teleport_panel(ax, groups[2], 2, 2, frames[2])
    lengths = np.hypot(quiver.U, quiver.V)
    spacing = 4.0 / (int(np.sqrt(len(groups[2]["trajectories"]))) - 1)
    np.testing.assert_allclose(lengths[lengths > 0], ARROW_FRACTION * spacing, rtol=1e-12)
    moves = (groups[2]["trajectories"][:, 2] - groups[2]["trajectories"][:, 0]) / scale
    np.testing.assert_allclose(quiver.get_array(), np.hypot(moves[:, 0], moves[:, 1]), rtol=1e-12)
    plt.close(figure)
