"""Memory at config time: values whose cost grows without bound (null draws, grid points,
batch sizes) are checked against the memory a job will have, so that an impossible value
stops ``snakemake`` before any job runs (and before Snakemake deletes an old output),
instead of a MemoryError inside a job.

A job's memory is the ``mem_mb`` the profile gives its rule (``set-resources`` or
``default-resources``, when it is a number: :func:`set_rule_memory`, called by the
workflow), else the physical memory of this machine. The estimates are upper bounds of
the arrays a job holds, with the formula in each stage's check; they are meant to catch
values that cannot fit, not to size jobs to the byte.
"""

from __future__ import annotations

import os

from rsdyn.core.schema import ConfigError

#: ``{rule: (bytes, where the number comes from)}`` from the profile
_RULE_MEMORY: dict[str, tuple[int, str]] = {}


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def set_rule_memory(rule: str, mem_mb: int | None) -> None:
    """Record the ``mem_mb`` the profile gives ``rule`` (None: forget it)."""
    if mem_mb is None:
        _RULE_MEMORY.pop(rule, None)
    else:
        _RULE_MEMORY[rule] = (int(mem_mb) * 1_000_000, f"the {int(mem_mb)} MB (mem_mb) the profile gives rule {rule}")


def memory_limit(rule: str) -> tuple[int, str]:
    """``(bytes, description)`` of the memory a job of ``rule`` will have."""
    if rule in _RULE_MEMORY:
        return _RULE_MEMORY[rule]
    total = machine_memory()
    return total, f"the {format_bytes(total)} of this machine"


def format_bytes(count: float) -> str:
    """``count`` bytes in the largest binary unit that keeps it at least 1 (``21.8 TiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} PiB"


def check_memory(rule: str, key: str, value: object, needed: float, what: str, fix: str) -> None:
    """ConfigError when ``needed`` bytes (what ``key = value`` costs a job of ``rule``: ``what``)
    exceed the job's memory (:func:`memory_limit`); ``fix`` ends the sentence."""
    limit, where = memory_limit(rule)
    if limit and needed > limit:
        raise ConfigError(
            f"{key} = {value!r} needs about {format_bytes(needed)} of memory in each {rule} job ({what}), "
            f"more than {where}; {fix}."
        )
