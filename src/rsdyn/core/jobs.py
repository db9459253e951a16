"""Helpers for the thin workflow scripts: logging to the rule's log, SIGTERM cleanup, a
one-line cause of failure and a throttled progress line at the terminal.

A job's log gets everything (logging, warnings, tqdm bars, the traceback). The terminal
that started snakemake gets two things only: a progress line about every
``PROGRESS_INTERVAL_S`` seconds from long loops wrapped in :func:`progress`, and, when the
job fails, one line with the cause (the error's own message), printed last.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from rsdyn.core.manifest import check_output
from rsdyn.core.store import describe_read_failure, raise_on_sigterm

#: seconds between two progress lines on the terminal (RSDYN_PROGRESS_SECONDS overrides)
PROGRESS_INTERVAL_S = float(os.environ.get("RSDYN_PROGRESS_SECONDS", "10"))

#: the job's name on the terminal and the stream of the terminal (stderr before setup_job)
_JOB: dict[str, object] = {"name": None, "terminal": None}


def terminal() -> TextIO | None:
    """The terminal's stderr of a job started with :func:`setup_job` (None outside a job)."""
    return _JOB["terminal"]  # type: ignore[return-value]


def to_terminal(line: str) -> None:
    """Write one line to the terminal of the running job (nothing outside a job)."""
    stream = terminal()
    if stream is not None:
        try:
            stream.write(f"[{_JOB['name']}] {line}\n")
            stream.flush()
        except (OSError, ValueError):  # a closed terminal must not fail the job
            pass


#: exception types whose message reads on its own (rsdyn's own errors derive from these)
_SELF_EXPLAINING = (ValueError, RuntimeError, OSError, ArithmeticError)


def failure_message(error: BaseException) -> str:
    """The one line a user needs from an exception: a damaged chunk named by the store
    checks, else the error's own message (its first line), prefixed by the exception's
    type unless that is a plain ValueError, RuntimeError, OSError or ArithmeticError."""
    described = describe_read_failure(error)
    if described:
        return described
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if first and isinstance(error, _SELF_EXPLAINING):
        return first
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _report_failure(exc_type, error, tb) -> None:
    """sys.excepthook of a job: the traceback and the cause to the log, the cause alone
    (the last line the job prints) to the terminal."""
    traceback.print_exception(exc_type, error, tb, file=sys.stderr)
    message = failure_message(error)
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    to_terminal(f"failed: {message}")


def setup_job(log_path: str | None, name: str = "rsdyn") -> logging.Logger:
    """Send logging, warnings and stderr (tqdm bars) to ``log_path``; make SIGTERM clean up;
    keep the terminal for :func:`progress` lines and the one-line cause of a failure; read
    stdin from /dev/null, so that no library can stop a job with a question (such as
    transformers' "Do you wish to run the custom code? [y/N]"); check the job's inputs
    against their checksums (:func:`check_inputs`).

    Returns the logger to use in the script.
    """
    raise_on_sigterm()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - a job never asks a question (a library's prompt reads EOF and fails)
    job_name = Path(log_path).stem if log_path else name
    _JOB.update(name=job_name, terminal=sys.stderr)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
    else:
        _JOB["terminal"] = None  # stderr is the terminal already
    sys.excepthook = _report_failure
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    check_inputs()
    return logging.getLogger(name)


def job_inputs() -> list[str]:
    """The input files of the Snakemake job running this script (its ``snakemake`` object
    lives in the script's module), or [] outside a Snakemake script."""
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    inputs = getattr(job, "input", None)
    if inputs is None:
        return []
    return [str(path) for path in inputs]


def check_inputs(paths: list[str] | None = None) -> None:
    """Check every input of the job (``paths``, default :func:`job_inputs`) against the
    checksums written when it was created (:func:`rsdyn.core.manifest.check_output`), before
    the job reads anything: a damaged input fails the job at once, naming the file and the
    command that repairs it."""
    for path in job_inputs() if paths is None else paths:
        if Path(path).exists():
            check_output(path)


class _JobProgress(tqdm):
    """A tqdm bar (into the log, like every bar) that also writes one plain line to the
    terminal at most every ``PROGRESS_INTERVAL_S`` seconds, and one when it closes."""

    def __init__(self, *args, **kwargs):
        self._terminal_at = time.monotonic()
        self._terminal_n = 0  # the count the last terminal line showed
        super().__init__(*args, **kwargs)

    def _terminal_line(self) -> None:
        self._terminal_at, self._terminal_n = time.monotonic(), self.n
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = self.format_dict.get("rate")
        if rate is None and self.n and self.format_dict["elapsed"] > 0:  # smoothing=0: the mean rate so far, as tqdm shows it
            rate = self.n / self.format_dict["elapsed"]
        remaining = (self.total - self.n) / rate if rate and self.total else None
        eta = f", about {tqdm.format_interval(remaining)} left" if remaining is not None else ""
        to_terminal(f"{self.desc or 'progress'}: {done} {self.unit} after {tqdm.format_interval(self.format_dict['elapsed'])}{eta}")

    def update(self, n=1):
        shown = super().update(n)
        if time.monotonic() - self._terminal_at >= PROGRESS_INTERVAL_S:
            self._terminal_line()
        return shown

    def close(self):
        if not self.disable and terminal() is not None and self.n != self._terminal_n:
            self._terminal_line()
        super().close()


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` whose bar goes to the job's log; inside a job started by
    :func:`setup_job` it also prints a progress line on the terminal about every
    ``PROGRESS_INTERVAL_S`` seconds (outside a job it is a plain tqdm bar)."""
    if terminal() is None or kwargs.get("disable"):
        return tqdm(iterable, **kwargs)
    return _JobProgress(iterable, **kwargs)
