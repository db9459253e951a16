"""Cross-model comparison: the table, the "Across models" Markdown, the figure, and the
compare rule on two smoke-sized runs of different models."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake, tiny_llama

from rsdyn.report.compare import (
    CompareError,
    across_models_markdown,
    check_run_names,
    compare_rows,
    format_cell,
    read_compare_table,
    sublayer_depth,
    transition_depth,
    write_compare_table,
)
from rsdyn.report.compare_figure import save_fig_compare


def _summary(model: str, rows: dict, claims: list) -> dict:
    return {"run": model, "model": {"model_name": model}, "rows": rows, "claims": claims}


def _claim(claim_id, verdict, value, interval):
    return {"id": claim_id, "quote": "the | words", "verdict": verdict, "value": value, "interval": interval}


SUMMARIES = {
    "a": _summary("model-a", {
        "plain": {"value": 1.5, "paper": 2, "definition": "a plain number"},
        "diff": {"value": 0.2, "paper": "> 0", "definition": "a difference", "interval": [0.1, 0.3]},
    }, [_claim("grows", "reproduced", 0.2, [0.1, 0.3]), {"id": "none", "quote": "q", "verdict": None, "not_computed": "x"}]),
    "b": _summary("model-b", {
        "diff": {"value": -0.1, "paper": "> 0", "definition": "a difference", "interval": [-0.2, 0.05]},
        "only_b": {"value": [1, 2], "paper": None, "definition": "b's own"},
    }, [_claim("grows", "inconclusive", -0.1, [-0.2, 0.05])]),
}


def test_rows_union_in_first_seen_order_with_blanks():
    records = compare_rows(SUMMARIES)
    assert [record["quantity"] for record in records] == ["plain", "diff", "only_b"]
    assert records[0]["runs"]["b"] is None and records[2]["runs"]["a"] is None


def test_cell_has_value_and_interval():
    assert format_cell(SUMMARIES["a"]["rows"]["diff"]) == "0.2 [0.1, 0.3]"
    assert format_cell(SUMMARIES["a"]["rows"]["plain"]) == "1.5"
    assert format_cell(None) == ""


def test_table_has_one_column_per_run(tmp_path):
    path = tmp_path / "summary.tsv"
    write_compare_table(SUMMARIES, path)
    runs, rows = read_compare_table(path)
    assert runs == ["a", "b"]
    diff = next(row for row in rows if row["quantity"] == "diff")
    assert diff["a"] == "0.2 [0.1, 0.3]" and diff["b"] == "-0.1 [-0.2, 0.05]"
    assert next(row for row in rows if row["quantity"] == "only_b")["a"] == ""


def test_across_models_table_lists_the_judged_claims():
    table = across_models_markdown(SUMMARIES)
    lines = table.strip().splitlines()
    assert lines[0] == "| claim | the paper's words | model-a | model-b |"
    assert len(lines) == 3 and lines[2].startswith('| `grows` | "the / words" | **reproduced** (0.2 [0.1, 0.3])')
    assert "**inconclusive** (-0.1 [-0.2, 0.05])" in lines[2]


def test_a_run_named_compare_is_refused():
    with pytest.raises(CompareError, match="named 'compare'"):
        check_run_names(["smoke", "compare"])


def test_normalised_depth():
    np.testing.assert_allclose(sublayer_depth(4), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(transition_depth(3, 4), [0.125, 0.375, 0.625])


def test_figure_overlays_models_of_different_depth(tmp_path):
    rng = np.random.default_rng(0)
    curves = {}
    for run, n_sublayers in (("a", 60), ("b", 36)):
        x = sublayer_depth(n_sublayers)
        curves[run] = {"norm": (x, rng.random(n_sublayers) + 1), "rotation_index:trained": (x, rng.random(n_sublayers)),
                       "rotation_index:initial": (x, rng.random(n_sublayers))}
    save_fig_compare(curves, tmp_path / "f.pdf", tmp_path / "f.png", {"a": "A", "b": "B"}, dpi=40)
    assert (tmp_path / "f.pdf").stat().st_size > 0 and (tmp_path / "f.png").stat().st_size > 0


# --------------------------------------------------------------------------- workflow


def _tiny_local_model(directory):
    """A 2-layer, 32-unit random Llama with SmolLM2's tokenizer (so the corpus rule works)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = REPO / "resources/models/smollm2-135m"
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    model = tiny_llama(n_layers=2, hidden=32)
    config = LlamaConfig(**{**model.config.to_dict(), "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                            "max_position_embeddings": 2048})  # the smoke corpus (max_chars 500) fits
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.workflow
def test_compare_rule_on_two_smoke_runs_of_different_models(smoke_run, tmp_path):
    """The smoke run (SmolLM2, 30 layers, copied from the session's smoke run) and a tiny
    local random Llama (2 layers, 32 units): only the tiny run's jobs and compare run."""
    work = copy_workflow(tmp_path)
    shutil.copytree(smoke_run / "results/smoke", work / "results/smoke", symlinks=True)
    resources = work / "resources-compare"
    (resources / "models").mkdir(parents=True)
    link = resources / "models/smollm2-135m"
    os.symlink(REPO / "resources/models/smollm2-135m", link)
    # Snakemake compares a symlink's own mtime: give the new link the converted model's,
    # as if the model had been converted into this resources folder before the smoke run.
    converted = (REPO / "resources/models/smollm2-135m").stat().st_mtime
    os.utime(link, (converted, converted), follow_symlinks=False)
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    config["resources_dir"] = str(resources)
    config["runs"].append({
        "name": "tiny",
        "model": {"source": "local", "path": str(_tiny_local_model(tmp_path / "tiny-llama")), "name": "tiny-llama"},
        "teleport": {"layers": [0, 1]},
    })
    (work / "config/compare-test.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(work, "--cores", "2", "--configfile", "config/compare-test.yaml")
    assert "wildcards: run=smoke" not in result.stdout  # the copied run is complete
    runs, rows = read_compare_table(work / "results/compare/summary.tsv")
    assert runs == ["smoke", "tiny"]
    assert any(row["quantity"] == "jacobian_rotation_index_early_minus_late" and row["tiny"] for row in rows)
    assert (work / "results/compare/fig_compare.png").stat().st_size > 0
    markdown = (work / "results/compare/across_models.md").read_text()
    assert markdown.splitlines()[0].count("|") == 5  # claim, the paper's words, two models
    summary = json.loads((work / "results/tiny/summary.json").read_text())
    assert summary["rows"]["jacobian_cumulative_rank_fraction"]["value"] > 0
