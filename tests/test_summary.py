"""summary.json rendering: values, intervals, verdicts, table rows, the command line and the README generator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsdyn.core.verdicts import comparison_row
from rsdyn.report import readme
from rsdyn.report.summary import (
    format_value,
    main,
    markdown_table,
    write_summary,
    write_table,
)

SUMMARY = {"run": "r", "n_samples": 5, "model": {"model_id": "m", "n_layers": 2, "d_model": 4},
           "bootstrap": {"resamples": 200, "seed": 0, "level": 0.95}, "rows": {
    "corr_first": {"value": np.float64(0.91234), "paper": "> 0.8", "definition": "median r | first"},
    "ratio": comparison_row(1.5, "> 1", "late / early", np.array([1.2, 1.4, 1.6, 1.8]), ">", "sequences (4 resamples, seed 0)", null=1.0),
    "best_layers": {"value": [23, 7], "paper": [7, 15, 23], "definition": "ordered"},
    "per_layer": {"value": {"0": 1.5e5}, "paper": None, "definition": "mse"},
    "corr_first_shuffled": {"value": 0.5, "paper": None, "definition": "shuffled", "interval": [0.4, 0.6]},
    "few": {"value": 0.9, "paper": "> 0.8", "definition": "d", "caveat": "rests on 20 distinct states"},
}}


def test_values_render_compactly():
    assert format_value(0.91234) == "0.912"
    assert format_value({"0": 150000.0, "7": 2.0}) == "0: 1.5e+05, 7: 2"
    assert format_value([23, 7]) == "[23, 7]" and format_value(True) == "True" and format_value(None) == "—"


def test_markdown_table_shows_interval_and_verdict_and_escapes_pipes():
    table = markdown_table(SUMMARY, with_definitions=True).splitlines()
    assert len(table) == 2 + 6
    assert table[-1] == "| `few` | > 0.8 | 0.9 |  | rests on 20 distinct states | d |"
    assert table[2] == "| `corr_first` | > 0.8 | 0.912 |  |  | median r \\| first |"
    assert table[3].startswith("| `ratio` | > 1 | 1.5 | [1.21, 1.78] | reproduced (> 1) | late / early (interval: sequences")


def test_json_and_tsv_are_written_and_the_cli_prints_the_table(tmp_path, capsys):
    write_summary(SUMMARY, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text())["rows"]["corr_first"]["value"] == 0.91234
    write_table(SUMMARY, tmp_path / "summary.tsv")
    lines = (tmp_path / "summary.tsv").read_text().splitlines()
    assert lines[1].split("\t")[:3] == ["corr_first", "> 0.8", "0.912"]
    assert lines[2].split("\t")[:7] == ["ratio", "> 1", "1.5", "1.21", "1.78", "reproduced", "> 1"]
    main([str(tmp_path / "summary.json")])
    assert "| `best_layers` | [7, 15, 23] | [23, 7] |  |  |" in capsys.readouterr().out


README = """# title

intro

<!-- BEGIN generated: results -->
old table
<!-- END generated: results -->

text between

<!-- BEGIN generated: controls -->
<!-- END generated: controls -->

<!-- BEGIN generated: definitions -->
old
<!-- END generated: definitions -->
tail
"""


def test_readme_blocks_are_regenerated_in_place(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README)
    control = json.loads(json.dumps({**SUMMARY, "run": "keep", "rows": {"corr_first_shuffled": {"value": 0.8, "paper": None, "definition": "d"}}}))
    summary = json.loads(json.dumps(SUMMARY, default=float))
    text = readme.update_readme(path, summary, control)
    assert path.read_text() == text
    assert "old table" not in text and "text between" in text and text.endswith("tail\n")
    results = text.split("<!-- BEGIN generated: results -->\n")[1].split("<!-- END")[0]
    assert "`ratio`" in results and "`corr_first`" in results and "`per_layer`" not in results  # no paper value, no verdict
    assert "200 bootstrap resamples (seed 0)" in results
    controls = text.split("<!-- BEGIN generated: controls -->\n")[1].split("<!-- END")[0]
    assert "| `corr_first` | 0.912 | 0.5 [0.4, 0.6] | 0.8 |" in controls
    definitions = text.split("<!-- BEGIN generated: definitions -->\n")[1].split("<!-- END")[0]
    assert "`per_layer`" in definitions and "mse" in definitions
    assert readme.update_readme(path, summary, control) == text  # idempotent


def test_readme_without_a_block_says_which(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# no markers\n")
    with pytest.raises(readme.ReadmeError, match="no block 'results'"):
        readme.update_readme(path, json.loads(json.dumps(SUMMARY, default=float)))
    assert path.read_text() == "# no markers\n"


def test_readme_cli_exits_with_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="cannot read the summary"):
        readme.main([str(tmp_path / "README.md"), str(tmp_path / "missing.json")])


def test_readme_across_models_block_is_the_compare_table(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README + "<!-- BEGIN generated: across_models -->\nold\n<!-- END generated: across_models -->\n")
    table = "| claim | paper says | a | b |\n|---|---|---|---|\n"
    (tmp_path / "across.md").write_text(table)
    readme.main([str(path), _written(tmp_path), "--compare", str(tmp_path / "across.md")])
    assert path.read_text().split("<!-- BEGIN generated: across_models -->\n")[1].split("<!-- END")[0] == table
    with pytest.raises(SystemExit, match="cannot read the comparison table"):
        readme.main([str(path), _written(tmp_path), "--compare", str(tmp_path / "missing.md")])


def _written(tmp_path) -> str:
    write_summary(SUMMARY, tmp_path / "summary.json")
    return str(tmp_path / "summary.json")
