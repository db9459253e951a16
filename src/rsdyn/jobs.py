"""Helpers for the thin workflow scripts: logging to the rule's log, SIGTERM cleanup."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rsdyn.store import raise_on_sigterm


def setup_job(log_path: str | None, name: str = "rsdyn") -> logging.Logger:
    """Send logging, warnings and stderr (tqdm bars) to ``log_path``; make SIGTERM clean up.

    Returns the logger to use in the script.
    """
    raise_on_sigterm()
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return logging.getLogger(name)
