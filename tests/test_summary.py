"""summary.json rendering: values, table rows and the command line."""

from __future__ import annotations

import json

import numpy as np

from rsdyn.summary import format_value, main, markdown_table, write_summary, write_table

SUMMARY = {"run": "r", "rows": {
    "corr_first": {"value": np.float64(0.91234), "paper": "> 0.8", "definition": "median r | first"},
    "best_layers": {"value": [23, 7], "paper": [7, 15, 23], "definition": "ordered"},
    "per_layer": {"value": {"0": 1.5e5}, "paper": None, "definition": "mse"},
}}


def test_values_render_compactly():
    assert format_value(0.91234) == "0.912"
    assert format_value({"0": 150000.0, "7": 2.0}) == "0: 1.5e+05, 7: 2"
    assert format_value([23, 7]) == "[23, 7]" and format_value(True) == "True"


def test_markdown_table_has_one_row_per_quantity_and_escapes_pipes():
    table = markdown_table(SUMMARY, with_definitions=True).splitlines()
    assert len(table) == 2 + 3
    assert table[2] == "| `corr_first` | > 0.8 | 0.912 | median r / first |"


def test_json_and_tsv_are_written_and_the_cli_prints_the_table(tmp_path, capsys):
    write_summary(SUMMARY, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text())["rows"]["corr_first"]["value"] == 0.91234
    write_table(SUMMARY, tmp_path / "summary.tsv")
    assert (tmp_path / "summary.tsv").read_text().splitlines()[1].split("\t")[:3] == ["corr_first", "> 0.8", "0.912"]
    main([str(tmp_path / "summary.json")])
    assert "| `best_layers` | [7, 15, 23] | [23, 7] |" in capsys.readouterr().out
