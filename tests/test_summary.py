"""summary.json rendering: descriptive rows (never judged), the claims table, TSV files, the command line and the README generator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsdyn.core.verdicts import comparison_row
from rsdyn.report import readme
from rsdyn.report.summary import (
    descriptive,
    format_value,
    main,
    markdown_claims,
    markdown_table,
    write_claims_table,
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
SUMMARY["rows"] = descriptive(SUMMARY["rows"])
CLAIMS = [
    {"id": "grows", "source": "paper", "section": "§3.1", "figure": "1B", "quote": "increase in magnitude", "statistic": "units.norm",
     "definition": "d", "unit": "sequences", "test": "superiority", "direction": ">", "null_value": 0.0, "margin": 0.1,
     "value": 1.96, "interval": [1.9, 2.0], "p": 0.0005, "p_holm": 0.012, "verdict": "reproduced", "stable": True},
    {"id": "flat", "source": "paper", "section": "§3.1", "quote": "relatively | constant", "statistic": "units.v",
     "definition": "d", "unit": "sequences", "test": "equivalence", "direction": ">", "null_value": 0.0, "margin": 0.2,
     "value": 0.26, "interval": [0.24, 0.28], "p": 1.0, "p_holm": 1.0, "verdict": "opposite", "stable": False},
    {"id": "pop", "source": "beyond", "section": "beyond the paper", "quote": "Hypothesis", "statistic": "population.j",
     "definition": "d", "unit": "sequences", "test": "superiority", "direction": ">", "null_value": 0.0, "margin": 0.0,
     "value": 0.1, "interval": [0.05, 0.15], "p": 0.4, "p_holm": 1.0, "verdict": "inconclusive", "stable": True},
    {"id": "centres", "source": "paper", "section": "§3.2", "quote": "centered at multiple points", "statistic": None,
     "verdict": None, "not_computed": "no criterion"},
]


def test_values_render_compactly():
    assert format_value(0.91234) == "0.912"
    assert format_value({"0": 150000.0, "7": 2.0}) == "0: 1.5e+05, 7: 2"
    assert format_value([23, 7]) == "[23, 7]" and format_value(True) == "True" and format_value(None) == "—"


def test_rows_are_descriptive_and_the_table_shows_interval_and_note_and_escapes_pipes():
    assert all("verdict" not in row and "expected" not in row for row in SUMMARY["rows"].values())
    table = markdown_table(SUMMARY, with_definitions=True).splitlines()
    assert len(table) == 2 + 6
    assert table[-1] == "| `few` | > 0.8 | 0.9 |  | rests on 20 distinct states | d |"
    assert table[2] == "| `corr_first` | > 0.8 | 0.912 |  |  | median r \\| first |"
    assert table[3].startswith("| `ratio` | > 1 | 1.5 | [1.21, 1.78] |  | late / early (interval: sequences")


def test_pairs_lose_their_verdicts_too():
    rows = descriptive({"t": {"value": 1, "verdict": "reproduced", "pairs": {"7 vs 0": {"value": 0.5, "verdict": "opposite"}}}})
    assert rows == {"t": {"value": 1, "pairs": {"7 vs 0": {"value": 0.5}}}}


def test_claims_table_shows_words_statistic_interval_p_and_verdict():
    lines = markdown_claims({"claims": CLAIMS}).splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith('| `grows` | "increase in magnitude" (§3.1, Fig. 1B) | `norm` (> 0 ± 0.1; sequences) | 1.96 [1.9, 2] |')
    assert "| < 0.001 (0.012) | **reproduced** |" in lines[2]
    assert "relatively \\| constant" in lines[3] and "`v` (within 0 ± 0.2; sequences)" in lines[3]
    assert lines[3].endswith("**opposite** (unstable over bootstrap seeds) |")
    assert lines[4].startswith("| `pop (beyond the paper)` |")
    assert lines[5].endswith("| — | — |  | not computed: no criterion |")


def test_json_and_tsv_are_written_and_the_cli_prints_the_tables(tmp_path, capsys):
    summary = {**SUMMARY, "claims": CLAIMS}
    write_summary(summary, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text())["rows"]["corr_first"]["value"] == 0.91234
    write_table(summary, tmp_path / "summary.tsv")
    lines = (tmp_path / "summary.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:6] == ["quantity", "paper (Llama 3.1 8B)", "ours", "interval_low", "interval_high", "caveat"]
    assert lines[1].split("\t")[:3] == ["corr_first", "> 0.8", "0.912"]
    assert lines[2].split("\t")[:5] == ["ratio", "> 1", "1.5", "1.21", "1.78"]
    write_claims_table(summary, tmp_path / "claims.tsv")
    claims = [line.split("\t") for line in (tmp_path / "claims.tsv").read_text().splitlines()]
    assert claims[1][:10] == ["grows", "paper", "§3.1", "units.norm", "1.96", "1.9", "2", "0.0005", "0.012", "reproduced"]
    assert claims[4][9] == "not computed: no criterion"
    main([str(tmp_path / "summary.json")])
    out = capsys.readouterr().out
    assert "| `best_layers` | [7, 15, 23] | [23, 7] |  |  |" in out and "**reproduced**" in out


README = """# title

<!-- BEGIN generated: status -->
<!-- END generated: status -->

intro

<!-- BEGIN generated: results -->
old table
<!-- END generated: results -->

text between

<!-- BEGIN generated: controls -->
<!-- END generated: controls -->

<!-- BEGIN generated: readings -->
<!-- END generated: readings -->

<!-- BEGIN generated: definitions -->
old
<!-- END generated: definitions -->
tail
"""


def test_readme_blocks_are_regenerated_in_place(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README)
    control = json.loads(json.dumps({**SUMMARY, "run": "keep", "rows": {"corr_first_shuffled": {"value": 0.8, "paper": None, "definition": "d"}}}))
    summary = json.loads(json.dumps({**SUMMARY, "claims": CLAIMS, "claims_settings": {"registry": "config/claims.yaml", "resamples": 2000, "stability_seeds": 5, "judged": 3}}, default=float))
    text = readme.update_readme(path, summary, control)
    assert path.read_text() == text
    assert "old table" not in text and "text between" in text and text.endswith("tail\n")
    results = text.split("<!-- BEGIN generated: results -->\n")[1].split("<!-- END")[0]
    assert "`ratio`" in results and "`corr_first`" in results and "`per_layer`" not in results  # no paper value
    assert "200 bootstrap resamples (seed 0)" in results
    claims_at, details_at = results.index("| `grows` |"), results.index("<details>")
    assert claims_at < details_at < results.index("`ratio`"), "the claims table leads, the descriptive rows follow, collapsed"
    assert "4 claims (3 judged: 1 reproduced, 1 opposite, 1 inconclusive; 1 not computable)" in results
    assert "verdicts that change with the seed: flat" in results
    status = text.split("<!-- BEGIN generated: status -->\n")[1].split("<!-- END")[0]
    assert "of the paper's 3 registered claims: 1 reproduced, 1 opposite, 1 not computed" in status
    readings = text.split("<!-- BEGIN generated: readings -->\n")[1].split("<!-- END")[0]
    assert "- **`grows`** (§3.1, Fig. 1B): **reproduced**." in readings and "not computed (no criterion)" in readings
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


def test_the_weights_block_is_the_gguf_provenance_of_the_run(tmp_path):
    """The README's weights block: the file, its checksum, the general fields and the
    tensors per type, from the gguf attribute of the activations.zarr beside summary.json."""
    import zarr

    from rsdyn.report.readme import run_provenance, update_readme

    gguf = {"file": "m.Q4_1.gguf", "size_bytes": 1234, "sha256": "ab" * 32, "gguf_package": "0.19.0",
            "general": {"name": "Tiny", "organization": "Org", "file_type_name": "MOSTLY_Q4_1", "base_model.0.name": "Base"},
            "tensor_types": {"Q4_1": {"tensors": 3, "elements": 3000}, "F32": {"tensors": 1, "elements": 10}}}
    run = tmp_path / "run"
    run.mkdir()
    zarr.open_group(run / "activations.zarr", mode="w").attrs["gguf"] = gguf
    assert run_provenance(run / "summary.json") == gguf
    assert run_provenance(tmp_path / "elsewhere" / "summary.json") is None
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- BEGIN generated: weights -->\nold\n<!-- END generated: weights -->\n"
                      "<!-- BEGIN generated: results -->\n<!-- END generated: results -->\n"
                      "<!-- BEGIN generated: definitions -->\n<!-- END generated: definitions -->\n")
    text = update_readme(readme, {"rows": {}}, gguf=gguf)
    block = text.split("<!-- BEGIN generated: weights -->\n")[1].split("<!-- END generated: weights -->")[0]
    assert "old" not in block and "`m.Q4_1.gguf`, 1,234 bytes" in block and "ab" * 32 in block
    assert "| organisation | Org |" in block and "| file type | MOSTLY_Q4_1 |" in block and "base model.0.name" in block
    assert "F32: 1 tensors, 10 weights; Q4_1: 3 tensors, 3,000 weights" in block
