"""The teleport grid (paper §2.8): an n x n grid of PC1-PC2 points over a range that is
fixed, the span of all projected states, or scaled to each layer's own states; and the
seeded choice of corpus samples of the sample control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsdyn.geometry.settings import TeleportError

#: ``teleport.range`` value that scales each layer's grid to its own data
PER_LAYER = "per_layer"


def data_range(projection: np.ndarray, margin: float) -> tuple[float, float]:
    """``(r_min, r_max)`` covering both PCs of ``projection`` (..., 2), widened by
    ``margin`` x span on each side (PC units)."""
    if margin < 0:
        raise TeleportError(f"teleport.margin = {margin}; it must be >= 0.")
    values = np.asarray(projection, dtype=np.float64)
    if values.size == 0 or values.shape[-1] != 2:
        raise TeleportError(f"The PCA projection must be a non-empty (..., 2) array; got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise TeleportError("The PCA projection contains NaN or infinite values; the grid range cannot be derived.")
    low, high = float(values.min()), float(values.max())
    span = high - low
    if span <= 0:
        raise TeleportError(
            f"The projected data span an empty range ({low} to {high}); set teleport.range to [r_min, r_max] with r_min < r_max."
        )
    return low - margin * span, high + margin * span


def layer_data_range(projection: np.ndarray, layer: int, range_sd: float, centre: np.ndarray | None = None) -> np.ndarray:
    """Per-axis grid range of ``teleport.range: per_layer``: PC k spans centre_k +- ``range_sd``
    standard deviations (over sequences, ddof 1) of the projected states at sublayer 2l;
    ``centre`` (2,) defaults to those states' mean (the stage passes the control's state
    at 2l, so that the grid surrounds it). float64 (2, 2): row k is [low, high] of PC k+1."""
    if isinstance(range_sd, bool) or not isinstance(range_sd, (int, float)) or not range_sd > 0:
        raise TeleportError(f"teleport.range_sd = {range_sd!r}; it must be a number > 0.")
    values = np.asarray(projection, dtype=np.float64)
    if values.ndim != 3 or values.shape[-1] != 2 or not 0 <= 2 * layer < values.shape[1] or values.shape[0] < 2:
        raise TeleportError(
            f"The PCA projection must be (N >= 2, 2L, 2) with sublayer 2l = {2 * layer} in it; got shape {values.shape}."
        )
    states = values[:, 2 * layer]
    if not np.isfinite(states).all():
        raise TeleportError("The PCA projection contains NaN or infinite values; the grid range cannot be derived.")
    sd = states.std(axis=0, ddof=1)
    centre = states.mean(axis=0) if centre is None else np.asarray(centre, dtype=np.float64)
    if not (sd > 0).all():
        raise TeleportError(
            f"The projected states at sublayer {2 * layer} do not vary along PC{int(np.argmin(sd)) + 1}; "
            "teleport.range: per_layer cannot scale a grid to them, use null or [r_min, r_max]."
        )
    return np.stack([centre - range_sd * sd, centre + range_sd * sd], axis=1)


def check_range(value_range: Sequence[float]) -> tuple[float, float]:
    """``value_range`` as two finite floats with ``r_min < r_max``; clear error otherwise."""
    if value_range is None or isinstance(value_range, str) or len(value_range) != 2:
        raise TeleportError(
            f"teleport.range = {value_range!r}; it must be [r_min, r_max] (two numbers), null or {PER_LAYER!r}."
        )
    low, high = (float(v) for v in value_range)
    if not (np.isfinite(low) and np.isfinite(high)) or not low < high:
        raise TeleportError(
            f"teleport.range = [{low}, {high}] is empty; it must be [r_min, r_max] with finite r_min < r_max."
        )
    return low, high


def axis_ranges(value_range) -> np.ndarray:
    """``[r_min, r_max]`` (both PCs) or ``[[pc1 min, max], [pc2 min, max]]`` as float64 (2, 2)."""
    shape = np.shape(value_range) if not isinstance(value_range, str) and value_range is not None else ()
    if shape == (2, 2):
        return np.array([check_range(pair) for pair in value_range])
    low, high = check_range(value_range)
    return np.array([[low, high], [low, high]])


def grid_points(value_range, n: int) -> np.ndarray:
    """Uniform n x n grid: float64 (n*n, 2). ``value_range`` is [r_min, r_max] for both
    PCs or one [min, max] row per PC (see :func:`axis_ranges`).

    Row ``i * n + j`` is ``(pc1[j], pc2[i])``, ``pc_k = linspace(min_k, max_k, n)`` (PC1
    varies fastest).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise TeleportError(f"teleport.grid_n = {n!r}; it must be an integer >= 2.")
    (low1, high1), (low2, high2) = axis_ranges(value_range)
    pc1, pc2 = np.meshgrid(np.linspace(low1, high1, int(n)), np.linspace(low2, high2, int(n)))
    return np.stack([pc1.ravel(), pc2.ravel()], axis=1)


def grid_range_for(settings: Mapping[str, Any], projection: np.ndarray, layer: int, centre: np.ndarray | None = None) -> np.ndarray:
    """The grid's [min, max] per PC (2, 2) for ``layer``: ``range``; or, when it is null,
    the span of every projected state widened by ``margin``; or, when it is ``per_layer``,
    ``centre`` (the control's state at 2l; default the states' mean) +- ``range_sd``
    standard deviations of the layer's own states."""
    value_range = settings.get("range", PER_LAYER)
    if value_range is None:
        value_range = data_range(projection, settings.get("margin", 0.1))
    elif value_range == PER_LAYER:
        value_range = layer_data_range(projection, layer, settings.get("range_sd", 3.0), centre)
    return axis_ranges(value_range)


def grid_for(settings: Mapping[str, Any], projection: np.ndarray, layer: int = 0, centre: np.ndarray | None = None) -> np.ndarray:
    """The (n*n, 2) grid of the settings for ``layer`` (see :func:`grid_range_for`)."""
    return grid_points(grid_range_for(settings, projection, layer, centre), settings.get("grid_n", 10))


def sample_indices(n_samples: int, count: int, seed: int = 0) -> np.ndarray:
    """The sample control's sequences: ``count`` of ``n_samples`` without replacement, seeded,
    sorted; the same for every layer. int64 (count,)."""
    if count > n_samples:
        raise TeleportError(
            f"teleport.sample_control = {count} exceeds the {n_samples} sequences of the capture; "
            f"allowed is 0 to {n_samples}."
        )
    return np.sort(np.random.default_rng([seed, n_samples]).choice(n_samples, size=count, replace=False))
