"""Statistics and summary rows of jacobian.zarr (rsdyn.jacobian.statistics, .summary), Fig. 5,
and the device choice and paper-scale timing (rsdyn.jacobian.devices)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from rsdyn.jacobian.jacobian import CUMULATIVE_SCALARS, MATRIX_SCALARS
from rsdyn.jacobian.statistics import (
    Resamples,
    counts,
    early_minus_late,
    group_statistic,
    log_early_over_late,
    observed,
    resamples,
    row_weights,
    weighted_mean,
)
from rsdyn.jacobian.summary import summary_jacobian

PROMPT = np.array([1, 5, 9, 22, 7, 31, 4, 8, 17, 3])


# --------------------------------------------------------------------------- statistics


def test_counts_are_seeded_multinomial_draws():
    drawn = counts(7, 50, seed=3, stream=1)
    assert drawn.shape == (50, 7) and np.all(drawn.sum(axis=1) == 7)
    np.testing.assert_array_equal(drawn, counts(7, 50, seed=3, stream=1))
    assert not np.array_equal(drawn, counts(7, 50, seed=3, stream=2))


def test_weighted_statistics_equal_the_mean_over_the_resampled_rows():
    """Reference: expand the rows by their sequence and draw counts (rows drawn with
    replacement as a two-stage bootstrap would) and take the plain mean."""
    rng = np.random.default_rng(0)
    sequence = np.array([0, 2, 3, 0, 2, 3, 0, 2, 3])
    draw = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])  # three init seeds x three of five sequences
    group = {"rotation_index": rng.random((9, 12)), "sequence": sequence, "draw": draw}
    boot = Resamples(counts(5, 30, seed=1), {"initial": counts(3, 30, seed=1, stream=2)})
    weights = row_weights("initial", group, boot)
    got = weighted_mean(early_minus_late(group["rotation_index"]), weights)
    for r in range(30):
        rows = [i for i in range(9) for _ in range(int(boot.sequences[r, sequence[i]] * boot.draws["initial"][r, draw[i]]))]
        expected = early_minus_late(group["rotation_index"])[rows].mean() if rows else np.nan
        np.testing.assert_allclose(got[r], expected, rtol=1e-12, equal_nan=True)


def test_per_row_gradients_against_loops():
    values = np.random.default_rng(1).random((4, 10)) + 0.5
    for row in range(4):
        np.testing.assert_allclose(early_minus_late(values)[row], values[row, :3].mean() - values[row, 7:].mean())
        np.testing.assert_allclose(log_early_over_late(values)[row], np.log(values[row, :3].mean() / values[row, 7:].mean()))


def test_one_sequence_draw_pairs_the_groups():
    arrays = {"sample_indices": np.arange(6), "trained": _group(np.random.default_rng(0), 6, 9, 4, 0.2, 2.0),
              "initial": _group(np.random.default_rng(1), 4, 9, 4, 0.0, 4.0, sequence=[1, 4, 1, 4], draw=[0, 0, 1, 1])}
    boot = resamples(arrays, 20, seed=0)
    assert boot.sequences.shape == (20, 6) and boot.draws["initial"].shape == (20, 2) and boot.draws["trained"].shape == (20, 1)
    trained = row_weights("trained", arrays["trained"], boot)
    initial = row_weights("initial", arrays["initial"], boot)
    np.testing.assert_array_equal(initial[:, 0], trained[:, 1] * boot.draws["initial"][:, 0])
    one = group_statistic(arrays, "trained", lambda g: np.asarray(g["rotation_index"])[:, 0], observed(arrays))
    np.testing.assert_allclose(one, [arrays["trained"]["rotation_index"][:, 0].mean()])


# --------------------------------------------------------------------------- summary rows


def _group(rng, rows: int, n_transitions: int, dim: int, gradient: float, final_rank: float, sequence=None, draw=None,
           norm_fall: float = 3.0) -> dict:
    """Per-row arrays shaped like a jacobian.zarr group; the three spectral quantities fall
    linearly with depth by ``gradient`` (plus noise), the update norm by ``norm_fall``."""
    depth = np.linspace(1, 0, n_transitions)
    n_layers = n_transitions // 2
    group = {key: rng.random((rows, n_transitions)) + 1 for key in MATRIX_SCALARS}
    group.update({key: rng.random((rows, n_layers)) + 1 for key in CUMULATIVE_SCALARS})
    for key in ("rotation_index", "henrici", "antisymmetric_share"):
        for prefix in ("", "update_"):
            group[prefix + key] = 0.3 + gradient * depth + 0.01 * rng.standard_normal((rows, n_transitions))
    group["update_frobenius_norm"] = 1 + norm_fall * depth + 0.01 * rng.random((rows, n_transitions))
    group["effective_rank_pr"] = np.full((rows, n_transitions), dim * 0.9)
    group["cumulative_effective_rank_entropy"] = np.linspace(dim * 0.9, final_rank, n_layers) + 0.1 * rng.standard_normal((rows, n_layers))
    group["cumulative_effective_rank_pr"] = np.linspace(dim * 0.5, final_rank / 3, n_layers) + 0.05 * rng.random((rows, n_layers))
    group["eigenvalues"] = np.ones((rows, n_transitions, dim), dtype=np.complex64)
    group["lyapunov"] = np.zeros((rows, n_layers, 8))
    group["sequence"] = np.arange(rows) if sequence is None else np.asarray(sequence)
    group["draw"] = np.zeros(rows, dtype=int) if draw is None else np.asarray(draw)
    return group


def _arrays(rng, trained_gradient=0.4, trained_rank=3.0, svd_like_trained=False):
    baseline_sequence, baseline_draw = [0, 3, 5, 0, 3, 5], [0, 0, 0, 1, 1, 1]
    arrays = {
        "sample_indices": np.arange(12),
        "trained": _group(rng, 12, 20, 16, gradient=trained_gradient, final_rank=trained_rank),
        "initial": _group(rng, 6, 20, 16, gradient=0.0, final_rank=14.0, sequence=baseline_sequence, draw=baseline_draw),
        "norm_matched": _group(rng, 6, 20, 16, gradient=0.1, final_rank=10.0, sequence=baseline_sequence, draw=baseline_draw),
    }
    if svd_like_trained:  # the surrogate reproduces the trained geometry: nothing is learned beyond it
        arrays["svd_matched"] = {**_group(rng, 12, 20, 16, gradient=trained_gradient, final_rank=trained_rank)}
    else:
        arrays["svd_matched"] = _group(rng, 6, 20, 16, gradient=0.15, final_rank=8.0, sequence=baseline_sequence, draw=baseline_draw)
    return arrays


def test_summary_rows_follow_the_synthetic_directions():
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    rows = summary_jacobian(arrays, {"d_model": 16}, n_resamples=100, seed=1)
    for prefix in ("jacobian_", "jacobian_update_"):
        for key in ("rotation_index", "henrici", "antisymmetric_share"):
            assert rows[f"{prefix}{key}_early_minus_late"]["verdict"] == "reproduced"
            assert rows[f"{prefix}{key}_depth_spearman"]["verdict"] == "reproduced"
            assert rows[f"{prefix}{key}_gradient_learned"]["verdict"] == "reproduced"
            initial = rows[f"{prefix}{key}_early_minus_late_initial"]
            # no gradient at init: |value| within a few s.e. (0.01 noise, 6 rows x 6 transitions per third: ~0.003)
            assert "verdict" not in initial and abs(initial["value"]) < 0.01 and len(initial["interval"]) == 2
            assert "init seeds (2)" in initial["resampled"]
    assert rows["jacobian_bottleneck_ratio"]["verdict"] == "reproduced"
    assert rows["jacobian_bottleneck_learned"]["verdict"] == "reproduced"
    np.testing.assert_allclose(rows["jacobian_cumulative_rank_fraction"]["value"], 3.0 / 16, rtol=0.05)
    assert "12" in rows["jacobian_bottleneck_learned"]["resampled"]
    for baseline in ("initial", "svd_matched", "norm_matched"):
        assert rows[f"jacobian_rotation_index_early_minus_late_trained_minus_{baseline}"]["verdict"] == "reproduced"
        assert rows[f"jacobian_cumulative_rank_final_trained_minus_{baseline}"]["verdict"] == "reproduced"
        assert "verdict" not in rows[f"jacobian_update_norm_log_early_over_late_trained_minus_{baseline}"]
        assert "Beyond the paper" in rows[f"jacobian_cumulative_rank_final_{baseline}"]["definition"]
    assert rows["jacobian_learned_geometry"]["verdict"] == "reproduced" and rows["jacobian_learned_geometry"]["value"] == 6
    # the same update-norm profile in every group: the differences are about 0
    assert abs(rows["jacobian_update_norm_log_early_over_late_trained_minus_svd_matched"]["value"]) < 0.01
    np.testing.assert_allclose(rows["jacobian_rotation_index_early_minus_late_trained_minus_initial"]["value"],
                               rows["jacobian_rotation_index_gradient_learned"]["value"])

    reversed_arrays = {name: {**group} for name, group in arrays.items() if name != "sample_indices"}
    reversed_arrays["trained"]["rotation_index"] = arrays["trained"]["rotation_index"][:, ::-1]
    flipped = summary_jacobian(reversed_arrays, {"d_model": 16}, n_resamples=100, seed=1)
    assert flipped["jacobian_rotation_index_early_minus_late"]["verdict"] == "opposite"
    assert flipped["jacobian_learned_geometry"]["verdict"] == "opposite"


def test_learned_geometry_needs_trained_to_differ_from_both_surrogates():
    rows = summary_jacobian(_arrays(np.random.default_rng(2), svd_like_trained=True), {"d_model": 16}, n_resamples=100, seed=1)
    assert rows["jacobian_rotation_index_early_minus_late_trained_minus_initial"]["verdict"] == "reproduced"
    assert rows["jacobian_rotation_index_early_minus_late_trained_minus_svd_matched"]["verdict"] == "inconclusive"
    assert rows["jacobian_learned_geometry"]["verdict"] == "inconclusive" and rows["jacobian_learned_geometry"]["value"] < 6


def test_summary_without_baselines_has_no_comparisons():
    rng = np.random.default_rng(0)
    rows = summary_jacobian({"trained": _group(rng, 4, 6, 8, 0.2, 2.0)}, n_resamples=20)
    assert not any(name.endswith(("_learned", "_initial")) or "_trained_minus_" in name for name in rows)
    assert "verdict" not in rows["jacobian_learned_geometry"] and "needs" in rows["jacobian_learned_geometry"]["caveat"]


# --------------------------------------------------------------------------- figure


def test_fig5_is_written_with_every_group(tmp_path):
    from rsdyn.core.store import write_group
    from rsdyn.jacobian.figure import cloud_transitions, save_fig5
    from rsdyn.jacobian.jacobian import product_depths, transition_names
    from rsdyn.jacobian.sample import SpectraOptions, design_groups

    model = tiny_llama(n_layers=3, hidden=16)
    options = SpectraOptions(surrogates=("svd_matched", "norm_matched"))
    groups, _ = design_groups(model, [PROMPT, PROMPT[:5]], [0, 1], [0, 1], [0, 1], options)
    attrs = {"weights": ["trained", "initial", "svd_matched", "norm_matched"], "transitions": transition_names(3),
             "product_depths": product_depths(6), "d_model": 16}
    write_group(tmp_path / "jacobian.zarr", {**groups, "sample_indices": np.arange(2)}, attrs=attrs)
    save_fig5(tmp_path / "jacobian.zarr", tmp_path / "fig5.pdf", tmp_path / "fig5.png", dpi=40)
    assert (tmp_path / "fig5.pdf").stat().st_size > 0 and (tmp_path / "fig5.png").stat().st_size > 0
    assert cloud_transitions(60) == [6, 30, 58]


# --------------------------------------------------------------------------- devices and the paper's scale


def test_spectra_device_choice():
    from rsdyn.jacobian.devices import resolve_spectra_device

    assert resolve_spectra_device("auto", "cpu", 8, torch.float32) == "cpu"
    assert resolve_spectra_device("cpu", "cuda", 8, torch.float32) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="jacobian.spectra_device"):
            resolve_spectra_device("cuda", "cpu", 8, torch.float32)


def test_time_design_on_a_tiny_llama_shaped_model():
    """The GPU benchmark's entry, on the CPU with a tiny model of Llama-3.1-8B's layout."""
    from rsdyn.jacobian.devices import llama8b_shaped, time_design

    model = llama8b_shaped("cpu", num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=64)
    assert model.config.num_key_value_heads == 2 and next(model.parameters()).device.type == "cpu"
    timing = time_design(model, n_sequences=16, n_tokens=9, timed_transitions=4)
    assert set(timing["jacobian_s"]) == {"attention", "mlp"} and timing["spectra_device"] == "cpu"
    assert timing["design"] == {"sequences": 16, "transitions": 4} and timing["estimate_s"] > 0
