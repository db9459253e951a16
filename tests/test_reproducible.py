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
    summary = json.loads(first)
    assert summary["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95}
    assert not [name for name, row in summary["rows"].items() if "verdict" in row], "rows are descriptive"
    judged = {claim["id"] for claim in summary["claims"] if claim.get("verdict")}
    assert {"within_above_cross_consistently", "velocity_steepest_rise_late_both_types", "norm_grows"} <= judged
    for name in ("summary.tsv", "claims.tsv"):
        assert (smoke_run / "results/smoke" / name).read_bytes() == (again / "results/smoke" / name).read_bytes()
