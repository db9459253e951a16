"""benchmarks/gpu.py --tiny: every part of the GPU benchmark (capture pipeline into zarr,
batched unit statistics, CAE epoch, Jacobians) runs on the CPU with tiny shapes and
writes a report whose ratios are all finite."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO

SECTIONS = {
    "capture": {"tokens_per_s", "ratio_capture_vs_bare_forward", "real_tokens"},
    "unit_stats": {"device_s_per_unit", "cpu_one_thread_s_per_unit", "speedup_per_quantity", "shard_speedup"},
    "cae": {"cpu_threads", "target"},
    "jacobian": {"d_model", "transitions", "jacobians_s_per_sequence", "spectra_s_per_matrix", "rule_estimate_s",
                 "ratio_spectra_cpu_vs_device"},
}


def ratios(value, path=""):
    """(path, value) of every number under a key that names a ratio or a speed-up."""
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else key
            if isinstance(item, (int, float)) and ("ratio" in key or "speedup" in key or "speedup" in path):
                yield inner, float(item)
            else:
                yield from ratios(item, inner)


def test_the_tiny_gpu_benchmark_runs_on_the_cpu_and_reports_finite_ratios(tmp_path):
    out = tmp_path / "gpu.json"
    env_path = str(REPO / "src")
    result = subprocess.run(
        [sys.executable, "gpu.py", "--tiny", "--out", str(out)], cwd=REPO / "benchmarks", capture_output=True, text=True,
        timeout=900, env={**__import__("os").environ, "PYTHONPATH": env_path},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device"] == "cpu"
    for section, keys in SECTIONS.items():
        assert keys <= set(report[section]), f"{section} lacks {keys - set(report[section])}"
    assert set(report["unit_stats"]["speedup_per_quantity"]) == {"correlations", "mi_kde", "mi_ksg", "rotations"}
    assert {"d32", "d64"} <= set(report["cae"])
    found = list(ratios(report))
    assert len(found) == 9, found  # capture 1, unit stats 4 + the shard, CAE 2, Jacobian spectra 1
    assert all(math.isfinite(value) and value > 0 for _, value in found), found
    assert report["jacobian"]["d_model"] == 64 and report["jacobian"]["transitions"] == 4
    assert "non_finite_ratios" not in report
