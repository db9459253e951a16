"""A throwaway single-node SLURM cluster for the tests: munged, slurmctld and slurmd.

Everything (config, keys, sockets, state, spool, logs) lives under one directory;
the daemons run in the foreground as children of this process and are stopped by
their own PIDs. Clients reach the cluster through ``SLURM_CONF`` in ``cluster.env``.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env, check=True)

The node is declared with the machine's cores and memory (or more, when asked to:
``SlurmdParameters=config_overrides`` keeps a node declared larger than the machine
in service, so a cluster profile sized for real nodes can be scheduled on a laptop;
the kernel then shares the real cores). It offers ``gpu`` generic resources backed
by ``/dev/null``, so ``--gpus=1`` jobs schedule on a CPU-only machine, one at a time
per declared GPU. Needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/install-system.sh``)
and root (or a user that may run the daemons).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REQUIRED_BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel", "srun")
CLIENT_BINARIES = ("sbatch", "srun", "salloc", "squeue", "sinfo", "scontrol", "scancel", "sacct")


class SlurmClusterError(RuntimeError):
    """The test cluster could not be started or did not behave; the message says why."""


def missing_binaries() -> list[str]:
    """Names of the SLURM/munge programs that are not on PATH (empty when all are there)."""
    return [name for name in REQUIRED_BINARIES if shutil.which(name) is None]


def machine_cpus() -> int:
    """Logical CPUs usable by this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_memory_mb() -> int:
    """Total memory of the machine in MiB, from /proc/meminfo."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmClusterError("MemTotal not found in /proc/meminfo.")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def _tail(path: Path, lines: int = 25) -> str:
    """Last ``lines`` lines of a log file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or f"({path} is empty)"


class SlurmCluster:
    """Start and stop a one-node SLURM cluster under ``root`` (a context manager).

    cpus, mem_mb: what the node declares; default the machine's CPUs and memory;
    values above the machine's are allowed (the node is then oversubscribed).
    gpus: number of fake ``gpu`` generic resources on the node.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        cpus: int | None = None,
        mem_mb: int | None = None,
        gpus: int = 1,
        partition: str = "debug",
        start_timeout_s: float = 60.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.cpus = max(cpus or 0, machine_cpus())
        self.mem_mb = max(mem_mb or 0, machine_memory_mb())
        if gpus < 1:
            raise ValueError(f"gpus must be at least 1, got {gpus}.")
        self.gpus = gpus
        self.partition = partition
        self.start_timeout_s = start_timeout_s
        self.node = "rsdyn-node"
        self.host = socket.gethostname().split(".")[0]
        self.user = getpass.getuser()
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.logs = {
            "munged": self.root / "log" / "munged.log",
            "slurmctld": self.root / "log" / "slurmctld.log",
            "slurmd": self.root / "log" / "slurmd.log",
        }
        self._procs: dict[str, subprocess.Popen] = {}
        self._stdio: dict[str, Path] = {}

    # ------------------------------------------------------------------ public
    @property
    def env(self) -> dict[str, str]:
        """Environment for clients (sbatch, squeue, snakemake) talking to this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    @property
    def pids(self) -> dict[str, int]:
        """PID of each running daemon, by name."""
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    def start(self) -> "SlurmCluster":
        """Write the configuration, start munged, slurmctld and slurmd; wait for an idle node."""
        missing = missing_binaries()
        if missing:
            raise SlurmClusterError(
                f"SLURM/munge programs not found on PATH: {', '.join(missing)}; "
                "install them with .ci/install-system.sh (Debian packages slurm-wlm and munge)."
            )
        try:
            self._write_files()
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_node_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop the daemons (slurmd, slurmctld, munged) by PID."""
        if self._procs.get("slurmctld") is not None and self._procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", f"--user={self.user}"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.squeue(states="RUNNING,PENDING,COMPLETING"):
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def cleanup(self) -> None:
        """Stop the cluster and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(self, args: list[str], *, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; output captured as text."""
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(args)} exited with {result.returncode}: {result.stderr.strip()}\n{self.diagnostics()}"
            )
        return result

    def squeue(self, states: str = "all") -> list[tuple[str, str]]:
        """(job id, state) of the jobs slurmctld still knows, in the given states."""
        result = subprocess.run(
            ["squeue", "--noheader", "--format=%i|%T", f"--states={states}"],
            env=self.env, capture_output=True, text=True, timeout=30,
        )
        if result.returncode != 0:
            return []
        return [tuple(line.split("|", 1)) for line in result.stdout.split() if "|" in line]

    def job_state(self, job_id: str) -> str:
        """SLURM state of one job (e.g. PENDING, RUNNING, COMPLETED, FAILED)."""
        out = self.run(["scontrol", "show", "job", "--oneliner", str(job_id)]).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        raise SlurmClusterError(f"no JobState for job {job_id} in: {out.strip()}")

    def wait_job(self, job_id: str, timeout_s: float = 120) -> str:
        """Wait until a job has left the queue; return its final state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state not in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}:
                return state
            time.sleep(0.5)
        raise SlurmClusterError(f"job {job_id} still {state} after {timeout_s:.0f} s.\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        """Daemon states and the tail of every daemon log, for error messages."""
        parts = []
        for name, proc in self._procs.items():
            status = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            parts.append(f"{name} (pid {proc.pid}): {status}")
        for name, log in self.logs.items():
            parts.append(f"--- {name} log {log}:\n{_tail(log)}")
            stdio = self._stdio.get(name)
            if stdio is not None and stdio.exists() and stdio.stat().st_size:
                parts.append(f"--- {name} stdout/stderr:\n{_tail(stdio)}")
        return "\n".join(parts)

    # ----------------------------------------------------------------- private
    def _write_files(self) -> None:
        for sub in ("bin", "etc", "munge", "log", "state", "spool", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_client_wrappers()
        os.chmod(self.root / "munge", 0o755)  # munged wants the socket directory searchable by all
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, slurmd_port = _free_ports(2)
        gres_file = "File=/dev/null" if self.gpus == 1 else f"Count={self.gpus}"
        (self.root / "etc" / "gres.conf").write_text(f"NodeName={self.node} Name=gpu {gres_file}\n")
        self.conf.write_text(
            f"""# generated by tests/slurm_cluster.py: one node, no accounting, no cgroups
ClusterName=rsdyn-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={self.user}
SlurmdUser={self.user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "run" / "slurmctld.pid"}
SlurmdPidFile={self.root / "run" / "slurmd.pid"}
SlurmctldLogFile={self.logs["slurmctld"]}
SlurmdLogFile={self.logs["slurmd"]}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName={self.node} NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _write_client_wrappers(self) -> None:
        """bin/<client> scripts that run the real client with SLURM_CONF set to this cluster.

        snakemake-executor-plugin-slurm-jobstep removes every SLURM_* variable but the
        job's identity before its nested ``srun``, SLURM_CONF included; on a real
        cluster srun then reads /etc/slurm/slurm.conf. These wrappers (first on the
        jobs' PATH, exported by sbatch) give the nested srun this cluster's config
        without touching /etc.
        """
        for name in CLIENT_BINARIES:
            real = shutil.which(name, path=os.environ.get("PATH", os.defpath))
            if real is None:
                continue
            wrapper = self.root / "bin" / name
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
            wrapper.chmod(0o755)

    def _spawn(self, name: str, args: list[str]) -> None:
        stdio = self.root / "log" / f"{name}.stdio"
        self._stdio[name] = stdio
        with open(stdio, "ab") as out:
            self._procs[name] = subprocess.Popen(
                args, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait(self, name: str, what: str, ready) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            proc = self._procs[name]
            if proc.poll() is not None:
                raise SlurmClusterError(f"{name} exited with {proc.returncode} before {what}.\n{self.diagnostics()}")
            if ready():
                return
            time.sleep(0.25)
        raise SlurmClusterError(f"{name}: no {what} after {self.start_timeout_s:.0f} s.\n{self.diagnostics()}")

    def _start_munged(self) -> None:
        self._spawn("munged", [
            "munged", "--foreground", "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={self.root / 'munge' / 'munge.key'}",
            f"--pid-file={self.root / 'run' / 'munged.pid'}",
            f"--log-file={self.logs['munged']}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        ])

        def credential_round_trip() -> bool:
            if not self.munge_socket.exists():
                return False
            cred = subprocess.run(["munge", "-n", "-S", str(self.munge_socket)], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            back = subprocess.run(["unmunge", "-S", str(self.munge_socket)], input=cred.stdout, capture_output=True, timeout=10)
            return back.returncode == 0

        self._wait("munged", "working munge socket", credential_round_trip)

    def _start_slurmctld(self) -> None:
        # -D: foreground (so the PID is ours); -i: ignore state from an earlier run.
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])

        def answers_ping() -> bool:
            ping = subprocess.run(["scontrol", "ping"], env=self.env, capture_output=True, text=True, timeout=10)
            return ping.returncode == 0 and "UP" in ping.stdout

        self._wait("slurmctld", "answer to 'scontrol ping'", answers_ping)

    def _start_slurmd(self) -> None:
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait("slurmd", f"node {self.node} registered", lambda: self._node_state() not in {"", "unk", "unk*"})

    def _node_state(self) -> str:
        out = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%t", f"--nodes={self.node}"],
            env=self.env, capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""

    def _wait_node_idle(self) -> None:
        def idle() -> bool:
            state = self._node_state()
            if state.startswith(("drain", "down", "fail")) and "*" not in state:
                reason = subprocess.run(
                    ["sinfo", "--noheader", "--Node", "--format=%E", f"--nodes={self.node}"],
                    env=self.env, capture_output=True, text=True, timeout=10,
                ).stdout.strip()
                raise SlurmClusterError(f"node {self.node} is {state}: {reason}\n{self.diagnostics()}")
            return state == "idle"

        self._wait("slurmd", f"idle node {self.node}", idle)
