"""Units stage entries, one per rule, each reading its input stores and writing its
output: every per-unit quantity of one unit range (:func:`run_unit_stats_shard`, rule
``unit_stats_shard``), the shards joined into ``unit_stats.zarr``
(:func:`run_unit_stats_gather`, rule ``unit_stats_gather``) and the per-sublayer table
(:func:`run_layer_stats`, rule ``layer_stats``). Fig. 1 is drawn by
:func:`rsdyn.units.figure.save_fig1`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsdyn.core.store import atomic_path, open_group, write_group
from rsdyn.units.layer_stats import layer_stats
from rsdyn.units.settings import split_units
from rsdyn.units.unit_stats import compute_shard, gather, shard_attrs

log = logging.getLogger(__name__)


def run_unit_stats_shard(store_path: str | Path, out_path: str | Path, settings: Mapping[str, Any], shard: int) -> None:
    """Rule ``unit_stats_shard``: the ``shard``-th of ``settings["shards"]`` unit ranges of
    ``activations.zarr``, both conditions -> ``unit_stats/shard_{shard}.zarr``."""
    n_units = open_group(store_path)["original"].shape[2]
    unit_start, unit_stop = split_units(n_units, settings["shards"])[int(shard)]
    log.info("shard %s: units %d-%d of %d", shard, unit_start, unit_stop - 1, n_units)
    timings: dict[str, float] = {}
    result = compute_shard(store_path, unit_start, unit_stop, settings, timings)
    log.info("seconds per quantity: %s", {name: round(value, 2) for name, value in timings.items()})
    write_group(out_path, result, attrs=shard_attrs(store_path, unit_start, unit_stop, settings))
    log.info("wrote %s", out_path)


def run_unit_stats_gather(shard_paths: Sequence[str | Path], out_path: str | Path) -> None:
    """Rule ``unit_stats_gather``: the shard stores, in unit order -> ``unit_stats.zarr``."""
    arrays, attrs = gather(list(shard_paths))
    write_group(out_path, arrays, attrs=attrs)
    log.info("gathered %d shards (%d units) into %s", len(shard_paths), len(arrays["units"]), out_path)


def run_layer_stats(store_path: str | Path, out_path: str | Path, density_threshold: float) -> None:
    """Rule ``layer_stats``: norms, density, cosine and velocity per sublayer and transition
    of ``activations.zarr`` -> ``layer_stats.csv``."""
    table = layer_stats(store_path, density_threshold)
    with atomic_path(out_path) as temp:
        table.to_csv(temp, index=False)
    log.info("wrote %s (%d rows)", out_path, len(table))
