"""A capture killed in the middle leaves nothing a rerun takes for complete, and
`snakemake --rerun-incomplete` finishes it (issue 5, robustness).

The run is the smoke config with more sequences, so that the capture is still in its
forward passes when the signal arrives. The forward passes run in the capture_shard job
(which streams sample blocks into its store as it goes); the capture rule then assembles
the shard stores. Two ways to die are tested: a signal to the capture shard job's own
process (SIGTERM: a node drain; SIGKILL: the OOM killer) and SIGTERM to snakemake itself
(Ctrl-C's cousin, `scancel` of the driving job).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_workflow, run_snakemake, snakemake_command, snakemake_env
from test_reruns import planned_jobs

from rsdyn.core.store import open_group, read_group

pytestmark = pytest.mark.workflow

N_SAMPLES = 96
RUN = "smoke"
START_TIMEOUT_S = 600  # model conversion on a fresh machine comes first


def capture_job_pid(workdir: Path) -> int | None:
    """PID of the running capture shard script of this workflow copy, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b".capture_shard.py") and str(workdir).encode() in part for part in argv):
            return int(entry.name)
    return None


def wait_for_forward_passes(workdir: Path, driver: subprocess.Popen) -> int:
    """Block until the capture shard job logs its first batch; return the job's PID."""
    log = workdir / "results" / RUN / "logs" / "capture_activations_shard_0.log"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"snakemake ended before the capture started:\n{driver.stdout.read()[-4000:]}")
        pid = capture_job_pid(workdir)
        if pid and log.exists() and "capture original" in log.read_text():
            return pid
        time.sleep(0.1)
    raise AssertionError("the capture did not start within the time limit")


@pytest.fixture
def interrupted_workdir(tmp_path):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    config["corpus"]["n_samples"] = N_SAMPLES
    (work / "config/interrupt.yaml").write_text(yaml.safe_dump(config))
    return work


def start_capture(work: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """Start snakemake up to the capture; return it, the capture job's PID and the args."""
    args = ["--cores", "2", "--configfile", "config/interrupt.yaml", "--until", "capture"]
    driver = subprocess.Popen(
        snakemake_command(*args), cwd=work, env=snakemake_env(work),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        return driver, wait_for_forward_passes(work, driver), args
    except BaseException:
        driver.kill()
        raise


#: a hang guard, not a speed check: a loaded 2-core machine needed more than 300 s to
#: finish the 96-sequence capture after snakemake's graceful SIGTERM
FINISH_TIMEOUT_S = 1500


def finish(driver: subprocess.Popen) -> str:
    try:
        output, _ = driver.communicate(timeout=FINISH_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
    return output


def check_store(store: Path) -> None:
    arrays, attrs = read_group(store), dict(open_group(store).attrs)
    assert attrs["n_samples"] == N_SAMPLES
    n_rows = attrs.get("sample_stop", N_SAMPLES) - attrs.get("sample_start", 0)  # a shard store holds its range
    for condition in ("original", "shuffled"):
        assert arrays[condition].shape == (n_rows, 2 * attrs["n_layers"], attrs["d_model"])
        assert np.isfinite(arrays[condition]).all()


def planned_rules(work: Path, args: list[str]) -> set[str]:
    return {rule for rule, _ in planned_jobs(run_snakemake(work, "--dry-run", *args).stdout)}


@pytest.mark.parametrize("kill_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_capture_job_leaves_nothing_and_rerun_incomplete_finishes_it(interrupted_workdir, kill_signal):
    """SIGTERM (scancel, a node drain) lets the job delete its temporary; SIGKILL (the OOM
    killer) leaves it behind, hidden, and the rerun removes it."""
    work = interrupted_workdir
    driver, job_pid, args = start_capture(work)
    os.kill(job_pid, kill_signal)
    output = finish(driver)
    assert driver.returncode != 0, f"snakemake reported success after the kill:\n{output[-3000:]}"

    run_dir = work / "results" / RUN
    store = run_dir / "activations.zarr"
    shard_dir = run_dir / "capture"
    assert not store.exists(), "a killed capture left an activations store behind"
    assert not (shard_dir / "activations_shard_0.zarr").exists(), "a killed capture shard left its store behind"
    if kill_signal == signal.SIGTERM:
        assert not list(shard_dir.glob(".tmp-*")), "a terminated capture left its temporary store behind"
    assert {"capture_shard", "capture"} <= planned_rules(work, args)

    run_snakemake(work, "--rerun-incomplete", *args)
    check_store(store)
    assert not list(shard_dir.glob(".tmp-*")), "the rerun left a temporary store behind"
    assert not planned_rules(work, args) & {"capture_shard", "capture"}


def test_sigterm_to_snakemake_lets_the_running_capture_finish(interrupted_workdir):
    """Snakemake's own SIGTERM handling is graceful: no new jobs, the running capture shard
    completes and its output is whole, so only the assembly is left to run."""
    work = interrupted_workdir
    driver, _, args = start_capture(work)
    os.kill(driver.pid, signal.SIGTERM)
    output = finish(driver)
    assert "Will exit after finishing currently running jobs" in output
    check_store(work / "results" / RUN / "capture" / "activations_shard_0.zarr")
    assert "capture_shard" not in planned_rules(work, args)
    run_snakemake(work, *args)
    check_store(work / "results" / RUN / "activations.zarr")
