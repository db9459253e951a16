"""Same config and thread count -> identical numbers: two smoke runs give byte-identical summaries."""

from __future__ import annotations

import json

import pytest
from conftest import copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow


def test_two_smoke_runs_give_byte_identical_summary_json(smoke_run, tmp_path):
    again = copy_workflow(tmp_path)
    run_snakemake(again, "--cores", "2", "--configfile", "config/smoke.yaml")
    first = (smoke_run / "results/smoke/summary.json").read_bytes()
    second = (again / "results/smoke/summary.json").read_bytes()
    assert first == second
    rows = json.loads(first)["rows"]
    assert json.loads(first)["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95}
    judged = [name for name, row in rows.items() if row.get("verdict")]
    assert "corr_within_minus_cross" in judged and "velocity_late_early_ratio" in judged
    assert (smoke_run / "results/smoke/summary.tsv").read_bytes() == (again / "results/smoke/summary.tsv").read_bytes()
