"""The ``unit_stats`` and ``layer_stats`` sections: config-time checks against the corpus
size and the model's width. Imports no torch (the config imports it before any job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.core.errors import UnitStatsInputError
from rsdyn.core.schema import ConfigError

SECTIONS = ("unit_stats", "layer_stats")

CONDITIONS = ("original", "shuffled")

#: fewest sequences a per-unit statistic is computed from
MIN_SAMPLES = 3


def split_units(n_units: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``(start, stop)`` unit ranges covering ``0..n_units``.

    The first ``n_units % shards`` ranges hold one unit more than the others.
    """
    if shards < 1:
        raise UnitStatsInputError(f"unit_stats.shards = {shards}; it must be at least 1.")
    if shards > n_units:
        raise UnitStatsInputError(
            f"unit_stats.shards = {shards} exceeds the number of units d_model = {n_units}; "
            f"use at most {n_units} shards."
        )
    base, extra = divmod(n_units, shards)
    sizes = [base + (1 if index < extra else 0) for index in range(shards)]
    stops = np.cumsum(sizes).tolist()
    return [(stop - size, stop) for stop, size in zip(stops, sizes)]


def check_config(section: str, run: Mapping[str, Any], shape) -> None:
    """Config-time checks of ``run[section]`` (``shape``: the model's ``ModelShape``)."""
    if section != "unit_stats":
        return
    unit_stats, n_samples = run["unit_stats"], run["corpus"]["n_samples"]
    if n_samples is not None and unit_stats["ksg_k"] >= n_samples:
        raise ConfigError(
            f"unit_stats.ksg_k = {unit_stats['ksg_k']} needs more than {unit_stats['ksg_k']} samples but "
            f"corpus.n_samples = {n_samples}; use ksg_k of at most {n_samples - 1}."
        )
    if shape.d_model is not None and unit_stats["shards"] > shape.d_model:
        raise ConfigError(
            f"unit_stats.shards = {unit_stats['shards']} exceeds the {shape.d_model} units of {run['model']['name']}; "
            f"use at most {shape.d_model} shards."
        )
