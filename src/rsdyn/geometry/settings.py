"""The ``pca`` and ``teleport`` sections: config-time checks against the model's shape,
and the settings one teleport job depends on. Imports no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsdyn.core.resources import check_memory, format_bytes, memory_limit
from rsdyn.core.schema import ConfigError

SECTIONS = ("pca", "teleport")


class TeleportError(ValueError):
    """The teleport settings or inputs cannot be used; the message says what is allowed."""


def job_settings(teleport_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The teleport settings one layer's job depends on: all but ``layers`` and
    ``arrow_sublayers``, so that adding a layer or changing the arrows reruns no layer."""
    return {key: value for key, value in teleport_settings.items() if key not in ("layers", "arrow_sublayers")}


def check_layers(layers: Sequence[int], n_layers: int, model_name: str = "the model") -> list[int]:
    """The teleport layers as ints; one-sentence error naming the model's layer count."""
    if not layers:
        raise TeleportError("teleport.layers is empty; give at least one layer index.")
    bad = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, (int, np.integer))]
    if bad:
        raise TeleportError(f"teleport.layers = {list(layers)} holds non-integers {bad}; layers are integer indices.")
    out_of_range = [int(layer) for layer in layers if not 0 <= layer < n_layers]
    if out_of_range:
        raise TeleportError(
            f"teleport.layers {out_of_range} do not exist: {model_name} has {n_layers} layers, "
            f"so teleport layers must lie in 0..{n_layers - 1}."
        )
    return [int(layer) for layer in layers]


#: bytes per teleported point and unit: its residual (float64), its states at every
#: sublayer (float32) and a forward pass's working set (20 float32 per unit)
POINT_BYTES_PER_UNIT_EXTRA = 8 + 4 * 20


def check_grid_memory(teleport: Mapping[str, Any], n_layers: int, d_model: int) -> None:
    """``teleport.grid_n`` against the memory of a ``teleport_layer`` job: every grid point
    and sample-control state goes through the model in one batch (about D x (4 B x 2L + 88 B)
    per point) besides the float32 weights (48 B x L x D^2)."""
    per_point = d_model * (4 * 2 * n_layers + POINT_BYTES_PER_UNIT_EXTRA)
    weights = 48 * n_layers * d_model**2
    grid_n, control = teleport["grid_n"], teleport["sample_control"]
    limit, _ = memory_limit("teleport_layer")
    points = max(0, (limit - weights) // per_point - control)
    check_memory(
        "teleport_layer", "teleport.grid_n", grid_n, weights + (grid_n**2 + control) * per_point,
        f"{grid_n}^2 grid points and {control} sample states teleported in one batch, besides "
        f"{format_bytes(weights)} of float32 weights",
        f"use a grid_n of at most {int(points ** 0.5)}" if points >= 4 else "the model alone does not fit: give the job more memory (mem_mb)",
    )


def check_config(section: str, run: Mapping[str, Any], shape) -> None:
    """Config-time checks of ``run[section]`` (``shape``: the model's ``ModelShape``)."""
    model_name = run["model"]["name"]
    if section == "teleport":
        teleport = run["teleport"]
        value_range = teleport.get("range")
        if isinstance(value_range, list) and not value_range[0] < value_range[1]:
            raise ConfigError(f"teleport.range = {value_range} is empty or inverted; it must be [r_min, r_max] with r_min < r_max.")
        if shape.n_layers is not None:
            try:
                check_layers(teleport["layers"], shape.n_layers, model_name)
            except TeleportError as err:
                raise ConfigError(str(err)) from None
        if shape.n_layers is not None and shape.d_model is not None:
            if teleport.get("device") != "cuda":  # on a GPU the batch lives in device memory
                check_grid_memory(teleport, shape.n_layers, shape.d_model)
    if section == "pca" and shape.d_model is not None:
        n_samples, n_layers, d_model = run["corpus"]["n_samples"], shape.n_layers, shape.d_model
        rows = None if n_samples is None or n_layers is None else n_samples * 2 * n_layers
        limit = d_model if rows is None else min(rows, d_model)
        n_components = run["pca"]["n_components"]
        if n_components > limit:
            described = f"{d_model} units" if rows is None else f"{n_samples} x {2 * n_layers} states of {d_model} units"
            raise ConfigError(f"pca.n_components = {n_components} does not fit {model_name} ({described}); allowed is 2 to {limit}.")
