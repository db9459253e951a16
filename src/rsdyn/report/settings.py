"""The ``figures`` and ``summary`` sections: figure resolution, the bootstrap behind every
interval of summary.json, and the claims registry the summary judges (checked at config
time). Imports no torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsdyn.core.schema import ConfigError

SECTIONS = ("figures", "summary")


def check_config(section: str, run: Mapping[str, Any], shape) -> None:  # noqa: ARG001 - same signature for every stage
    """The claims registry ``summary.claims`` exists and is well formed (every claim with its
    statistic, unit, direction, null value and margin), checked before any job."""
    if section != "summary":
        return
    from rsdyn.core.claims import load_registry

    try:
        load_registry(run["summary"]["claims"])
    except ConfigError as err:
        raise ConfigError(f"summary.claims: {err}") from None

