"""No stale or wrong result passes for current (issue 11): each silent case of the past is
run on a copy of the finished smoke run: it fails, the same command is run again, and it
must fail again (or rebuild), never exit 0 with an old store taken for the new settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIGURES, run_snakemake, snakemake_command, snakemake_env
from test_interrupt import capture_job_pid
from test_reruns import planned_jobs

pytestmark = pytest.mark.workflow

RUN_DIR = Path("results/smoke")


@pytest.fixture
def finished(smoke_run, tmp_path):
    """A private copy of the finished smoke run (code, results and Snakemake's records)."""
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run.parent, copy, symlinks=True, ignore=shutil.ignore_patterns("report.zip"))
    return copy / smoke_run.name


def write_config(work: Path, edit) -> str:
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    edit(config)
    (work / "config/edited.yaml").write_text(yaml.safe_dump(config))
    return "config/edited.yaml"


def run(work: Path, *args: str, configfile: str = "config/smoke.yaml"):
    return run_snakemake(work, "--cores", "2", "--configfile", configfile, *args, check=False)


def planned(work: Path, *args: str, configfile: str = "config/smoke.yaml") -> set[str]:
    result = run_snakemake(work, "--dry-run", "--cores", "2", "--configfile", configfile, *args)
    return {rule for rule, _ in planned_jobs(result.stdout)} - {"all"}


@pytest.mark.parametrize(
    "section,failing,gather",
    [("unit_stats", "unit_stats_shard", "unit_stats_gather"), ("teleport", "teleport_layer", "teleport_gather")],
)
def test_a_gather_whose_every_input_job_failed_is_not_kept_on_rerun(finished, section, failing, gather):
    """Every shard (every teleport layer) fails on the new setting; the old gathered store
    must not be taken for the new settings by a second run."""
    work = finished
    configfile = write_config(work, lambda c: c[section].update(device="cuda"))  # CI has no GPU
    run_config = (work / RUN_DIR / "run_config.yaml").read_text()
    for attempt in (1, 2):
        result = run(work, configfile=configfile)
        assert result.returncode != 0, f"attempt {attempt} exited 0:\n{result.stdout[-3000:]}"
        assert f"failed: {section}.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'." in result.stdout
    assert (work / RUN_DIR / "run_config.yaml").read_text() == run_config
    assert {failing, gather, "summary"} <= planned(work, configfile=configfile)


def test_a_deleted_chunk_fails_the_jobs_that_read_it_with_its_name(finished):
    work = finished
    store = work / RUN_DIR / "activations.zarr"
    (store / "original" / "c/0/0/3").unlink()
    configfile = write_config(work, lambda c: c.setdefault("layer_stats", {}).update(density_threshold=0.2))
    expected = (
        "[layer_stats] failed: results/smoke/activations.zarr: array 'original' is missing chunk c/0/0/3; "
        "the store was damaged after it was written: repair it with `rm -r results/smoke/activations.zarr`, then run snakemake again."
    )
    for _ in range(2):
        result = run(work, configfile=configfile)
        assert result.returncode != 0 and expected in result.stdout, result.stdout[-3000:]
    shutil.rmtree(store)
    rules = planned(work, configfile=configfile)
    assert {"capture", "layer_stats", "unit_stats_shard", "pca", "cae", "teleport_layer", "summary"} <= rules


def test_a_killed_forced_capture_is_rebuilt_by_the_next_plain_run(finished):
    """`--forcerun capture_shard capture`, the shard job SIGKILLed: the shard store is gone
    and the assembled store is untouched (Snakemake deletes it only when the assembly job
    starts). When the store is gone too (the assembly killed after its start deleted it),
    the next plain run rebuilds the shard, the store and everything computed from it."""
    work = finished
    store = work / RUN_DIR / "activations.zarr"
    shard_store = work / RUN_DIR / "capture" / "activations_shard_0.zarr"
    before = {path: path.stat().st_mtime_ns for path in store.rglob("*")}
    driver = subprocess.Popen(
        snakemake_command("--cores", "2", "--configfile", "config/smoke.yaml", "--forcerun", "capture_shard", "capture"),
        cwd=work, env=snakemake_env(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while (pid := capture_job_pid(work)) is None:
            assert driver.poll() is None and time.monotonic() < deadline, "the capture job never started"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0, output[-3000:]
    assert not shard_store.exists()
    assert {path: path.stat().st_mtime_ns for path in store.rglob("*")} == before

    shutil.rmtree(store)
    downstream = {"unit_stats_shard", "unit_stats_gather", "layer_stats", "pca", "cae", "teleport_layer",
                  "teleport_gather", "population", "fig1", "fig2", "fig3", "fig4", "fig1_summary", "summary"}
    assert {"capture_shard", "capture"} | downstream <= planned(work)
    result = run(work, "--until", "capture")
    assert result.returncode == 0, result.stdout[-3000:]
    assert store.is_dir() and shard_store.is_dir()
    assert downstream <= planned(work), "results computed from the killed store's predecessor count as current"


@pytest.mark.parametrize(
    "edit,message",
    [
        # each used to end in exit 0 on stale data, in a job failure or outside results/;
        # every other config-time check is tested without snakemake in test_config.py
        (lambda c: c["unit_stats"].update(shards=2.0), "unit_stats.shards = 2.0; it must be an integer, written without a decimal point (2)."),
        (lambda c: c.update(results_dir=""), "results_dir = ''; it must not be empty."),
        (lambda c: c["unit_stats"].update(ksg_k=100), "unit_stats.ksg_k = 100 needs more than 100 samples but corpus.n_samples = 16"),
    ],
)
def test_settings_that_used_to_fail_late_or_silently_stop_before_any_job(finished, edit, message):
    work = finished
    before = sorted((work / "results").rglob("*"))
    result = run(work, configfile=write_config(work, edit))
    assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]
    assert sorted((work / "results").rglob("*")) == before


def test_one_nested_value_can_be_changed_from_the_command_line(finished):
    rules = planned(finished, "--config", "teleport={grid_n: 4}")
    assert rules == {"teleport_layer", "teleport_gather", "summary"} | FIGURES


def test_verify_finds_damage_snakemake_cannot_see_and_the_next_run_rebuilds_exactly_that(finished):
    """A chunk deleted after the fact: Snakemake sees nothing to do (it looks at file
    times); `snakemake verify` deletes the damaged store, and the next run plans exactly
    its rebuild and what was computed from it."""
    work = finished
    chunk = next((work / RUN_DIR / "unit_stats.zarr" / "original" / "mi_kde").rglob("c/*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    assert planned(work) == set()
    result = run_snakemake(work, "verify", "--cores", "1", "--configfile", "config/smoke.yaml")
    assert f"deleted: {RUN_DIR / 'unit_stats.zarr'}" in result.stdout
    assert not (work / RUN_DIR / "unit_stats.zarr").exists()
    assert planned(work) == {"unit_stats_gather", "fig1_summary", "summary"} | FIGURES
    result = run_snakemake(work, "verify", "--cores", "1", "--configfile", "config/smoke.yaml")
    assert "0 damaged file(s)" in result.stdout
