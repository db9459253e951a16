"""The ``unit_stats`` and ``layer_stats`` sections: config-time checks against the corpus
size and the model's width. Imports no torch (the config imports it before any job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rsdyn.core.errors import UnitStatsInputError
from rsdyn.core.resources import check_memory, memory_limit
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
    if shape.d_model is not None and shape.n_layers is not None:
        check_null_memory(unit_stats, n_samples, 2 * shape.n_layers, shape.d_model)


#: bytes per null draw: per sublayer (the draws' random keys, their argsort and the
#: permutation indices, 8 B each) and per unit of a shard (the draws' R in float64, their
#: sorted copy for the quantiles, the float32 samples kept for each of the four nulls)
DRAW_BYTES_PER_SUBLAYER, DRAW_BYTES_PER_UNIT = 24, 64

#: bytes per draw and unit of the gather: the float32 samples of four nulls, two
#: conditions, read from the shards and written again
GATHER_BYTES_PER_DRAW_UNIT = 64


def check_null_memory(unit_stats: Mapping[str, Any], n_samples: int | None, n_sublayers: int, d_model: int) -> None:
    """``unit_stats.n_shuffles`` (and ``per_sample_shuffles``) against the memory of a
    ``unit_stats_shard`` job (24 B x draws x 2L + 64 B x draws x units per shard, besides
    the shard's float64 activations when N is known) and of the gather (64 B x draws x D)."""
    units = -(-d_model // unit_stats["shards"])
    states = 0 if n_samples is None else 2 * 8 * n_samples * n_sublayers * units
    per_draw = DRAW_BYTES_PER_SUBLAYER * n_sublayers + DRAW_BYTES_PER_UNIT * units
    draws = unit_stats["n_shuffles"]
    if unit_stats.get("per_sample") and n_samples is not None:  # each draw applied to every sample
        per_draw += 16 * units * n_samples * unit_stats["per_sample_shuffles"] / max(draws, 1)
    shard_limit, _ = memory_limit("unit_stats_shard")
    gather_most = max(1, memory_limit("unit_stats_gather")[0] // (GATHER_BYTES_PER_DRAW_UNIT * d_model))
    most = min(max(1, int((shard_limit - states) // per_draw)), gather_most)
    check_memory(
        "unit_stats_shard", "unit_stats.n_shuffles", draws, states + draws * per_draw,
        f"{draws} null draws of {units} units over {n_sublayers} sublayers for each of the four nulls",
        f"use at most {most} draws or more unit_stats.shards",
    )
    check_memory(
        "unit_stats_gather", "unit_stats.n_shuffles", draws, GATHER_BYTES_PER_DRAW_UNIT * draws * d_model,
        f"the null samples of {d_model} units, four nulls, two conditions", f"use at most {gather_most} draws",
    )
