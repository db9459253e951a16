"""The workflow on a real single-node SLURM cluster started by the tests (marker ``slurm``).

The cluster (munged, slurmctld, slurmd; see slurm_cluster.py) needs Debian's slurm-wlm
and munge (``.ci/install-system.sh``). If they are missing the tests fail, except
outside CI (no ``CI`` variable) where they are skipped with the reason; if the daemons
do not start, the tests fail with the daemon logs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake
from slurm_cluster import SlurmCluster, SlurmClusterError, missing_binaries

from rsdyn.core.manifest import is_manifest

pytestmark = pytest.mark.slurm

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
# The profile polls every 20 s or more; a test cluster answers at once.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2")


def profile_peak_request(profile_dir: Path) -> tuple[int, int]:
    """Largest cpus_per_task and mem_mb (MB, at the last retry) any job of the profile asks for."""
    profile = yaml.safe_load((profile_dir / "config.yaml").read_text())
    last_attempt = int(profile.get("retries", 0)) + 1
    requests = [profile.get("default-resources", {}), *profile.get("set-resources", {}).values()]
    cpus = [int(r.get("cpus_per_task", 1)) for r in requests]
    cpus += [int(t) for t in profile.get("set-threads", {}).values()]
    mem = [int(eval(str(r["mem_mb"]), {"__builtins__": {}}, {"attempt": last_attempt})) for r in requests if "mem_mb" in r]
    return max(cpus), max(mem, default=1000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node cluster, declared large enough for every job of the SLURM profile."""
    missing = missing_binaries()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"SLURM/munge not installed ({', '.join(missing)}); run .ci/install-system.sh")
    cpus, mem_mb = profile_peak_request(SLURM_PROFILE)
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=cpus, mem_mb=mem_mb, gpus=1)
    slurm.start()  # raises SlurmClusterError with the daemon logs when it cannot start
    yield slurm
    slurm.stop()


def jobs_submitted_from(cluster: SlurmCluster, workdir: Path) -> list[tuple[str, str, str]]:
    """(job id, job name, state) of every job slurmctld remembers whose working directory is ``workdir``."""
    out = cluster.run(["squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%Z"]).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
    return [(job, name, state) for job, name, state, cwd in rows if Path(cwd).resolve() == workdir.resolve()]


# --------------------------------------------------------------------------- cluster
def test_sbatch_job_completes(cluster, tmp_path):
    out = tmp_path / "hello.txt"
    job = cluster.run(["sbatch", "--parsable", f"--output={tmp_path / 'job.log'}", "--wrap", f"echo hello > {out}"]).stdout.strip()
    assert cluster.wait_job(job) == "COMPLETED"
    assert out.read_text() == "hello\n"


def test_gpu_job_schedules_on_cpu_only_node(cluster, tmp_path):
    out = tmp_path / "gpu.txt"
    job = cluster.run(
        ["sbatch", "--parsable", "--gpus=1", f"--output={tmp_path / 'job.log'}", "--wrap", f"echo $CUDA_VISIBLE_DEVICES > {out}"]
    ).stdout.strip()
    assert cluster.wait_job(job) == "COMPLETED"
    assert out.read_text().strip() == "0"  # the one fake GPU was allocated to the job


class ClusterWithWrongNodeName(SlurmCluster):
    """A cluster whose slurmd claims a node that slurm.conf does not define."""

    def _start_slurmd(self) -> None:
        self.node, real_node = "no-such-node", self.node
        try:
            super()._start_slurmd()
        finally:
            self.node = real_node


def test_daemon_failure_raises_with_its_log(cluster, tmp_path):
    broken = ClusterWithWrongNodeName(tmp_path / "broken", start_timeout_s=20)
    with pytest.raises(SlurmClusterError, match="slurmd exited") as error:
        broken.start()
    assert "no-such-node" in str(error.value)  # the daemon's own log line is in the message
    assert broken.pids == {}  # munged and slurmctld were stopped again


# ------------------------------------------------------------- throwaway workflow
THROWAWAY_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "capture.txt",
            expand("shard_{i}.txt", i=range(2)),


    rule capture:
        output:
            "capture.txt",
        resources:
            gpu=1,
        shell:
            "echo gpu=$CUDA_VISIBLE_DEVICES job=$SLURM_JOB_ID python=$(command -v python) > {output}"


    # Fails on its first attempt (no marker yet), succeeds when retried.
    rule unit_stats_shard:
        input:
            "capture.txt",
        output:
            "shard_{i}.txt",
        shell:
            "if [ ! -e attempted_{wildcards.i} ]; then touch attempted_{wildcards.i}; exit 1; fi; "
            "echo mem_mb={resources.mem_mb} job=$SLURM_JOB_ID > {output}"
    """
)


@pytest.fixture(scope="module")
def throwaway_run(cluster, tmp_path_factory):
    """The SLURM profile running a two-rule workflow (a GPU rule, a CPU rule failing once)."""
    work = tmp_path_factory.mktemp("throwaway")
    (work / "Snakefile").write_text(THROWAWAY_SNAKEFILE)
    result = run_snakemake(work, "--profile", str(SLURM_PROFILE), *FAST_POLLING, check=False, timeout=600, env=cluster.env)
    return work, result


def test_profile_runs_gpu_and_cpu_rules_through_sbatch(throwaway_run, cluster):
    work, result = throwaway_run
    assert result.returncode == 0, result.stdout[-6000:]
    capture = dict(field.split("=", 1) for field in (work / "capture.txt").read_text().split())
    assert capture["gpu"] == "0"  # --gpus=1 reached sbatch and got the node's GPU
    assert capture["job"]  # ran inside a SLURM job
    assert Path(capture["python"]).parent == Path(sys.executable).parent  # the job saw the submitting venv
    jobs = jobs_submitted_from(cluster, work)
    assert {name.split("_", 1)[0] for _, name, _ in jobs} == {"rsdyn"}  # the profile's job name prefix
    assert sum(state == "COMPLETED" for _, _, state in jobs) == 3  # capture and two shards


def test_failed_shard_is_retried_per_profile(throwaway_run, cluster):
    work, result = throwaway_run
    assert result.returncode == 0, result.stdout[-6000:]
    for i in range(2):
        shard = dict(field.split("=", 1) for field in (work / f"shard_{i}.txt").read_text().split())
        assert shard["mem_mb"] == "8000"  # second attempt: the profile's 4000 * attempt
    states = [state for _, _, state in jobs_submitted_from(cluster, work)]
    assert states.count("FAILED") == 2  # each shard's first attempt


# ------------------------------------------------------------------ real workflow
def test_bad_config_stops_before_any_submission(cluster, tmp_path):
    work = copy_workflow(tmp_path)
    (work / "bad.yaml").write_text("not_a_section: 1\n")
    result = run_snakemake(
        work, "--profile", str(SLURM_PROFILE), *FAST_POLLING, "--configfile", "config/smoke.yaml", "bad.yaml",
        check=False, timeout=300, env=cluster.env,
    )
    assert result.returncode != 0
    assert "Invalid config" in result.stdout and "not_a_section" in result.stdout
    assert jobs_submitted_from(cluster, work) == []
    assert not (work / ".snakemake" / "slurm_logs").exists()


SKIPPED_IN_COMPARISON = {"logs", "benchmarks"}  # timings and log text differ between runs
TIMING_WORDS = ("second", "elapsed", "duration", "wall", "time")  # keys/columns holding wall-clock times


def _is_timing(name: str) -> bool:
    return any(word in name.lower() for word in TIMING_WORDS)


def _without_timings(value):
    """A parsed JSON value with every key that names a wall-clock time removed."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _table_without_timings(path: Path) -> list[list[str]]:
    """Rows of a CSV/TSV file (header included) without its wall-clock time columns."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))
    if not rows:
        return rows
    keep = [i for i, name in enumerate(rows[0]) if not _is_timing(name)]
    return [[row[i] for i in keep if i < len(row)] for row in rows]


def _load_safetensors(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as weights:
        return dict(weights.metadata() or {}), {key: weights.get_tensor(key) for key in weights.keys()}


def _compare_zarr(a: Path, b: Path, where: str) -> list[str]:
    import zarr

    diffs = []
    group_a, group_b = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    if _without_timings(dict(group_a.attrs)) != _without_timings(dict(group_b.attrs)):
        diffs.append(f"{where}: attributes differ")
    arrays_a = dict(group_a.arrays())
    arrays_b = dict(group_b.arrays())
    if set(arrays_a) != set(arrays_b):
        diffs.append(f"{where}: arrays {sorted(arrays_a)} != {sorted(arrays_b)}")
    for name in set(arrays_a) & set(arrays_b):
        x, y = arrays_a[name][...], arrays_b[name][...]
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            diffs.append(f"{where}/{name}: values differ")
    groups_a, groups_b = dict(group_a.groups()), dict(group_b.groups())
    if set(groups_a) != set(groups_b):
        diffs.append(f"{where}: groups {sorted(groups_a)} != {sorted(groups_b)}")
    for name in set(groups_a) & set(groups_b):
        diffs += _compare_zarr(a / name, b / name, f"{where}/{name}")
    return diffs


def _load_numpy(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a .npy (key "") or .npz file."""
    if path.suffix == ".npy":
        return {"": np.load(path, allow_pickle=True)}
    with np.load(path, allow_pickle=True) as archive:
        return {key: archive[key] for key in archive.files}


def compare_results(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(outputs compared, differences) of two results folders.

    Same files in both (not the manifests: their checksums cover the files compared here,
    timings included); identical zarr arrays and attributes, NumPy arrays, safetensors
    weights, JSON and CSV/TSV (both without wall-clock timings) and other files;
    figures (PNG/PDF/SVG) only non-empty in both (they embed dates).
    """
    def entries(root: Path) -> set[str]:
        found = set()
        for path in root.rglob("*"):
            rel = path.relative_to(root)
            if SKIPPED_IN_COMPARISON & set(rel.parts) or any(p.endswith(".zarr") for p in rel.parts[:-1]) or is_manifest(path):
                continue
            if path.is_file() or path.suffix == ".zarr":
                found.add(rel.as_posix())
        return found

    files_a, files_b = entries(a), entries(b)
    diffs = [f"only in {a}: {p}" for p in sorted(files_a - files_b)] + [f"only in {b}: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        pa, pb = a / rel, b / rel
        if rel.endswith(".zarr"):
            with warnings.catch_warnings():  # snakemake's .snakemake_timestamp in directory outputs
                warnings.simplefilter("ignore", UserWarning)
                diffs += _compare_zarr(pa, pb, rel)
        elif pa.suffix == ".json":
            if _without_timings(json.loads(pa.read_text())) != _without_timings(json.loads(pb.read_text())):
                diffs.append(f"{rel}: JSON differs")
        elif pa.suffix in {".csv", ".tsv"}:
            if _table_without_timings(pa) != _table_without_timings(pb):
                diffs.append(f"{rel}: table differs")
        elif pa.suffix == ".safetensors":
            (meta_a, x), (meta_b, y) = _load_safetensors(pa), _load_safetensors(pb)
            if meta_a != meta_b or set(x) != set(y) or any(not np.array_equal(x[k], y[k]) for k in x):
                diffs.append(f"{rel}: weights differ")
        elif pa.suffix in {".npz", ".npy"}:
            x, y = _load_numpy(pa), _load_numpy(pb)
            if set(x) != set(y) or any(not np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind in "fc") for k in x):
                diffs.append(f"{rel}: arrays differ")
        elif pa.suffix in {".png", ".pdf", ".svg"}:
            if pa.stat().st_size == 0 or pb.stat().st_size == 0:
                diffs.append(f"{rel}: empty figure")
        elif pa.read_bytes() != pb.read_bytes():
            diffs.append(f"{rel}: content differs")
    return sorted(files_a | files_b), diffs


LOCAL_CORES = "2"  # conftest.smoke_run runs with --cores 2


def threads_of_local_run(work: Path) -> list[str]:
    """--set-threads giving every rule the threads it gets in the local run (--cores 2).

    The profile asks for more threads than the local run uses; float reductions over
    a different number of threads need not match bit for bit, so the comparison run
    keeps the profile's CPUs, memory, GPUs and retries but the local run's threads.
    """
    dry = run_snakemake(work, "--cores", LOCAL_CORES, "--configfile", "config/smoke.yaml", "--forceall", "-n")
    threads, rule = {}, None
    for line in dry.stdout.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in {"rule", "localrule"} and words[1].endswith(":"):
            rule = words[1][:-1]
            threads.setdefault(rule, 1)
        elif rule and len(words) == 2 and words[0] == "threads:":
            threads[rule] = int(words[1])
    assert threads, dry.stdout[-3000:]
    return ["--set-threads", *(f"{rule}={n}" for rule, n in sorted(threads.items()))]


def clone_workflow(source: Path, dest: Path) -> Path:
    """Copy of a working directory made by copy_workflow (same code snapshot), without its
    results; ``resources`` and ``../shared`` stay links. Returns the new working directory."""
    work = dest / "main"
    shutil.copytree(source, work, symlinks=True, ignore=shutil.ignore_patterns("results", ".snakemake", "__pycache__"))
    if (source.parent / "shared").exists():
        (dest / "shared").symlink_to((source.parent / "shared").resolve())
    return work


def test_smoke_dag_on_slurm_matches_local_run(cluster, smoke_run, tmp_path):
    work = clone_workflow(smoke_run, tmp_path)  # the very code the local run used
    env = {**cluster.env, "PYTHONPATH": str(work / "src")}  # the clone's rsdyn, not the live checkout's
    result = run_snakemake(
        work, "--profile", str(SLURM_PROFILE), *FAST_POLLING, *threads_of_local_run(work),
        "--configfile", "config/smoke.yaml", check=False, timeout=1800, env=env,
    )
    assert result.returncode == 0, result.stdout[-8000:]
    states = [state for _, _, state in jobs_submitted_from(cluster, work)]
    assert states and set(states) == {"COMPLETED"}, states
    dry = run_snakemake(work, "--configfile", "config/smoke.yaml", "-n")
    assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
    compared, diffs = compare_results(smoke_run / "results", work / "results")
    assert "smoke/activations.zarr" in compared
    assert diffs == []
