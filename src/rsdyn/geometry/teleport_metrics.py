"""How teleported trajectories recover (paper §3.4, Fig. 4D), as numbers per layer.

For teleport layer l the trajectories start at sublayer 2l (the injected point) and the
control prompt's own trajectory is ``control`` (2L, 2), all in PC1-PC2 (PC units). The
horizon is h = min(``arrow_sublayers``, 2L - 1 - 2l) sublayers (the paper's quiver spans
12; clipped to what remains after layer l). With p_s the position of point p's trajectory
at sublayer s, c_s the control's and d_s(p) = ||p_s - c_s||:

- ``distance_ratio`` (P,) = d_{2l+h} / d_{2l}: below 1 the point ends nearer the control
  than it started (recovery), 0 exactly on it, above 1 pushed away. NaN when d_{2l} = 0;
- ``spread_ratio`` () = (variance over points of p_{2l+h}) / (variance of p_{2l}), the
  variance being the mean squared distance to the points' centroid (both PCs): the
  paper's "lower variance of the perturbed trajectories";
- ``alignment`` (P,) = cosine between the point's own displacement minus the control's,
  (p_{2l+h} - p_{2l}) - (c_{2l+h} - c_{2l}), and the direction back to the control,
  c_{2l} - p_{2l}: 1 = pulled straight back to the control (the blog's "pulled toward its
  natural starting place"), 0 = sideways, -1 = pushed away. NaN for a zero vector;
- ``mse_to_control`` (P,) = mean over s = 2l+1 .. 2l+h of d_s^2 (PC units squared): the
  same number of sublayers at every layer, never the injected point s = 2l itself.

Scaled reading (``scaled_`` arrays): the natural states spread out with depth (on the
default model the spread of the corpus states in PC1-PC2 grows 24-fold over the 12
sublayers after layer 0), so an offset that keeps its size relative to the stream's
spread has a distance ratio above 1 and points away from the control. The scaled metrics
divide every position at sublayer s (trajectory and control) by ``data_spread``_s, the
root of the total PC1-PC2 variance of the corpus states at s, before the same formulas:
the distance ratio becomes (d_{2l+h} / sigma_{2l+h}) / (d_{2l} / sigma_{2l}).

Summary rows resample the grid points (or the corpus samples of the sample control) with
replacement, the same draw at every layer (the grid index is the same relative position in
every layer's grid, so layers are compared point by point), and compare the middle
teleport layers with the first and the last (the paper: 7, 15, 23 recover better than 0
and 31).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MSE_DEFINITION = (
    "mean over the h sublayers after the teleport layer (2l+1..2l+h, h = teleport.arrow_sublayers clipped to "
    "the model's depth) of the squared PC1-PC2 distance between the teleported last-token trajectory and the "
    "control prompt's (PC units squared)"
)

#: prefix of a teleported set's arrays in a layer group: the grid, and the sample control
SET_PREFIXES = ("", "sample_")


def horizon(layer: int, n_sublayers: int, arrow_sublayers: int) -> int:
    """Sublayers after 2l spanned by the metrics: ``arrow_sublayers`` clipped to 2L - 1 - 2l (>= 1)."""
    if isinstance(arrow_sublayers, bool) or int(arrow_sublayers) < 1:
        raise ValueError(f"teleport.arrow_sublayers = {arrow_sublayers!r}; it must be an integer >= 1.")
    remaining = n_sublayers - 1 - 2 * int(layer)
    if remaining < 1:
        raise ValueError(f"teleport layer {layer} leaves no sublayer after 2l = {2 * layer} of {n_sublayers}.")
    return min(int(arrow_sublayers), remaining)


def _norm(vectors: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(np.square(vectors), axis=-1))


def spread(points: np.ndarray) -> np.ndarray:
    """Mean squared distance of the points (..., P, 2) to their centroid (both PCs summed)."""
    points = np.asarray(points, dtype=np.float64)
    return np.mean(np.sum(np.square(points - points.mean(axis=-2, keepdims=True)), axis=-1), axis=-1)


def teleport_metrics(
    trajectories: np.ndarray, control: np.ndarray, layer: int, steps: int, data_spread: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``distance_ratio`` (P,), ``spread_ratio`` (), ``alignment`` (P,) and ``mse_to_control``
    (P,) (module docstring) of ``trajectories`` (P, 2L-2l, 2) from sublayer 2l against
    ``control`` (2L, 2), over ``steps`` = h sublayers. With ``data_spread`` (2L,), positions
    at sublayer s are divided by ``data_spread[s]`` first (the scaled reading). float64."""
    trajectories = np.asarray(trajectories, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    first = 2 * int(layer)
    if data_spread is not None:
        data_spread = np.asarray(data_spread, dtype=np.float64)
        if data_spread.shape != (len(control),) or not (data_spread > 0).all():
            raise ValueError(f"data_spread must be ({len(control)},) and positive; got shape {data_spread.shape}.")
        control = control / data_spread[:, None]
        trajectories = trajectories / data_spread[first:, None]
    if trajectories.ndim != 3 or trajectories.shape[1] != len(control) - first or trajectories.shape[2] != 2:
        raise ValueError(
            f"teleport trajectories must be (P, {len(control) - first}, 2) for layer {layer} of a "
            f"{len(control)}-sublayer control; got {trajectories.shape}."
        )
    if not 1 <= steps < trajectories.shape[1]:
        raise ValueError(f"teleport horizon {steps} must lie in 1..{trajectories.shape[1] - 1} for layer {layer}.")
    start, end = trajectories[:, 0], trajectories[:, steps]
    control_start, control_end = control[first], control[first + steps]
    back = control_start - start
    moved = (end - start) - (control_end - control_start)
    initial = _norm(back)
    final = _norm(end - control_end)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(initial > 0, final / np.where(initial > 0, initial, 1.0), np.nan)
        lengths = _norm(moved) * initial
        alignment = np.where(lengths > 0, np.sum(moved * back, axis=-1) / np.where(lengths > 0, lengths, 1.0), np.nan)
        spread_ratio = spread(end) / spread(start)
    window = trajectories[:, 1 : steps + 1] - control[first + 1 : first + steps + 1]
    return {
        "distance_ratio": ratio,
        "spread_ratio": np.asarray(spread_ratio),
        "alignment": alignment,
        "mse_to_control": np.mean(np.sum(np.square(window), axis=-1), axis=-1),
    }


def mse_to_control(trajectories: np.ndarray, control: np.ndarray, layer: int, steps: int) -> np.ndarray:
    """Per point: mean over s = 2l+1..2l+``steps`` of ||trajectory_s - control_s||^2 (PC units^2)."""
    return teleport_metrics(trajectories, control, layer, steps)["mse_to_control"]


def data_spread(projection: np.ndarray) -> np.ndarray:
    """Root of the total PC1-PC2 variance over sequences (ddof 1) at every sublayer of the
    projection (N, 2L, 2): float64 (2L,), PC units."""
    projection = np.asarray(projection, dtype=np.float64)
    return np.sqrt(projection.var(axis=0, ddof=1).sum(axis=-1))


def layer_metrics(group: Mapping[str, np.ndarray], layer: int, arrow_sublayers: int) -> dict[str, np.ndarray]:
    """The metric arrays of one ``teleport.zarr/layer_{l}`` group and its ``horizon``, from
    its trajectories: the grid's, and the sample control's (prefixed ``sample_``) when
    present; each also in the scaled reading (``scaled_`` after the set's prefix) when the
    group holds ``data_spread``."""
    control = np.asarray(group["control"])
    steps = horizon(layer, len(control), arrow_sublayers)
    out: dict[str, np.ndarray] = {"horizon": np.asarray(steps, dtype=np.int32)}
    spread_per_sublayer = group.get("data_spread")
    for prefix in SET_PREFIXES:
        name = f"{prefix}trajectories"
        if name in group and len(group[name]):
            metrics = teleport_metrics(group[name], control, layer, steps)
            out.update({f"{prefix}{key}": value.astype(np.float32) for key, value in metrics.items()})
            if spread_per_sublayer is not None:
                scaled = teleport_metrics(group[name], control, layer, steps, spread_per_sublayer)
                out.update({f"{prefix}scaled_{key}": value.astype(np.float32) for key, value in scaled.items()})
    return out


# --------------------------------------------------------------------------- summary rows


def _quiet_nan(function, *args, **kwargs):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def _statistics(groups, layers, indices, source: str, prefix: str) -> dict[str, np.ndarray]:
    """Per-layer statistics on the points ``indices`` (R, P) (R resamples) of the set whose
    trajectories are ``{source}trajectories`` and metrics ``{prefix}...``: median distance
    ratio, spread ratio, median alignment, mean MSE, each (R, n_layers), and ``defined``
    (n_layers,), the points with a finite distance ratio."""
    keys = ("distance_ratio", "spread_ratio", "alignment", "mse_to_control")
    out = {key: np.zeros((len(indices), len(layers))) for key in keys}
    out["defined"] = np.zeros(len(layers), dtype=np.int64)
    scaled = prefix != source
    for column, layer in enumerate(layers):
        group = groups[layer]
        steps = int(group["horizon"])
        trajectories = np.asarray(group[f"{source}trajectories"], np.float64)
        start, end = trajectories[indices, 0], trajectories[indices, steps]
        if scaled:
            sigma = np.asarray(group["data_spread"], np.float64)
            start, end = start / sigma[2 * layer], end / sigma[2 * layer + steps]
        ratio = np.asarray(group[f"{prefix}distance_ratio"], np.float64)
        out["defined"][column] = int(np.isfinite(ratio).sum())
        out["distance_ratio"][:, column] = _quiet_nan(np.nanmedian, ratio[indices], axis=1)
        out["alignment"][:, column] = _quiet_nan(np.nanmedian, np.asarray(group[f"{prefix}alignment"], np.float64)[indices], axis=1)
        out["mse_to_control"][:, column] = np.mean(np.asarray(group[f"{prefix}mse_to_control"], np.float64)[indices], axis=1)
        out["spread_ratio"][:, column] = _quiet_nan(np.divide, spread(end), spread(start))
    return out


def _geometric_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return _quiet_nan(lambda v: np.exp(np.nanmean(np.log(v), axis=axis)), np.asarray(values, np.float64))


#: metric -> (how layers are combined, direction of better recovery, paper's words, definition of the per-point value)
METRICS = {
    "distance_ratio": (
        "ratio", "<",
        "mid layers (7, 15, 23) recover better than layers 0 and 31",
        "median over points of d_{2l+h} / d_{2l}, d_s the PC1-PC2 distance of the point's trajectory from the control's at sublayer s",
    ),
    "spread_ratio": (
        "ratio", "<",
        "lower variance of the perturbed trajectories at mid layers",
        "variance over points of the PC1-PC2 positions at 2l+h / at 2l (mean squared distance to the centroid)",
    ),
    "alignment": (
        "difference", ">",
        "perturbed trajectories pulled back toward the control (blog: most clearly in lower layers)",
        "median over points of the cosine between the point's displacement over the horizon minus the control's "
        "and the direction from the point back to the control at 2l",
    ),
    "mse_to_control": (
        "ratio", "<",
        "lower mean squared error to the control at mid layers",
        "mean over points of the " + MSE_DEFINITION,
    ),
}


def _combine(values: np.ndarray, kind: str, mid: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mid layers against end layers along the last axis: a ratio of geometric means or a difference of means."""
    if kind == "ratio":
        return _geometric_mean(values[..., mid]) / _geometric_mean(values[..., ends])
    return _quiet_nan(np.nanmean, values[..., mid], axis=-1) - _quiet_nan(np.nanmean, values[..., ends], axis=-1)


def _interval_dict(layers, samples: np.ndarray) -> dict[str, list]:
    from rsdyn.core.verdicts import percentile_interval

    interval = percentile_interval(samples)
    return {str(layer): [_finite(interval[0, i]), _finite(interval[1, i])] for i, layer in enumerate(layers)}


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _set_rows(
    groups, layers, source: str, prefix: str, name: str, what: str, indices: np.ndarray, label: str, metrics: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per-layer rows and mid-vs-ends comparisons of one teleported set (grid or samples,
    raw or scaled): ``{name}_{metric}_per_layer`` and ``{name}_{metric}_mid_over_ends`` (or
    ``_mid_minus_ends``)."""
    from rsdyn.core.verdicts import comparison_row, row, verdict

    n_points = len(groups[layers[0]][f"{source}trajectories"])
    point = _statistics(groups, layers, np.arange(n_points)[None], source, prefix)
    resampled = _statistics(groups, layers, indices, source, prefix)
    steps = {str(layer): int(groups[layer]["horizon"]) for layer in layers}
    defined = {str(layer): int(point["defined"][i]) for i, layer in enumerate(layers)}
    rows: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        kind, expected, paper, definition = METRICS[metric]
        per_layer = row(
            {str(layer): _finite(point[metric][0, i]) for i, layer in enumerate(layers)}, paper,
            f"{what}, per teleport layer l: {definition}; horizon h per layer {steps}; "
            f"points with a defined distance ratio {defined} of {n_points}",
        )
        per_layer.update(intervals=_interval_dict(layers, resampled[metric]), resampled=label)
        key = "mse" if metric == "mse_to_control" else metric
        rows[f"{name}_{key}_per_layer"] = per_layer
    if len(layers) < 3:
        return rows
    mid, ends = np.arange(1, len(layers) - 1), np.array([0, len(layers) - 1])
    for metric in metrics:
        kind, expected, paper, definition = METRICS[metric]
        null = 1.0 if kind == "ratio" else 0.0
        combined = "geometric mean over" if kind == "ratio" else "mean over"
        operator = "/" if kind == "ratio" else "-"
        key = "mse" if metric == "mse_to_control" else metric
        comparison = comparison_row(
            float(_combine(point[metric][0], kind, mid, ends)), paper,
            f"{what}: {combined} the middle teleport layers {[layers[i] for i in mid]} {operator} {combined} the first "
            f"and last {[layers[i] for i in ends]} of the per-layer {definition}",
            _combine(resampled[metric], kind, mid, ends), expected, label, null=null,
        )
        pairs = {}
        for i in mid:
            for j in ends:
                samples = _combine(resampled[metric], kind, np.array([i]), np.array([j]))
                interval = _interval_dict(["pair"], samples[:, None])["pair"]
                pairs[f"{layers[i]} vs {layers[j]}"] = {
                    "value": _finite(_combine(point[metric][0], kind, np.array([i]), np.array([j]))),
                    "interval": interval,
                    "verdict": verdict([np.nan if v is None else v for v in interval], expected, null),
                }
        comparison["pairs"] = pairs
        suffix = "mid_over_ends" if kind == "ratio" else "mid_minus_ends"
        rows[f"{name}_{key}_{suffix}"] = comparison
    return rows


def summary_teleport(
    groups: Mapping[int, Mapping[str, np.ndarray]], n_resamples: int = 200, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``summary.json`` rows for teleportation from ``{layer: group arrays}`` (with the
    metric arrays of :func:`layer_metrics`).

    Per teleported set (the grid, and the sample control when stored): per-layer rows of
    the median distance ratio, the spread ratio, the median alignment and the mean MSE
    over the horizon, each with per-layer 95 % bootstrap intervals; mid-vs-ends comparison
    rows with intervals, verdicts and every mid/end pair; the ranking of layers by median
    distance ratio (``teleport_best_layers``) with how often each layer ranks first.
    """
    from rsdyn.core.verdicts import bootstrap_indices, resampled_label, row

    layers = sorted(int(layer) for layer in groups)
    if not layers:
        raise ValueError("No teleport layers to summarise.")
    check_layer_sets({layer: groups[layer] for layer in layers}, ("trajectories", "sample_trajectories"))
    n_points = len(groups[layers[0]]["trajectories"])
    indices = bootstrap_indices(n_points, n_resamples, seed)
    label = resampled_label("grid points, the same draw at every layer", n_resamples, seed)
    scaled = all("data_spread" in groups[layer] for layer in layers)
    rows = _set_rows(groups, layers, "", "", "teleport", "teleported grid (PC units)", indices, label, list(METRICS))
    ratio = rows["teleport_distance_ratio_per_layer"]["value"]
    ranking = sorted(layers, key=lambda layer: (np.inf if ratio[str(layer)] is None else ratio[str(layer)]))
    resampled = _statistics(groups, layers, indices, "", "")["distance_ratio"]
    firsts = np.argmin(np.where(np.isnan(resampled), np.inf, resampled), axis=1)
    best = row(
        ranking, [7, 15, 23],
        "teleport layers ordered by median distance ratio d_{2l+h} / d_{2l} of the grid, best recovery (lowest) first",
    )
    best.update(
        first_fraction={str(layer): float(np.mean(firsts == i)) for i, layer in enumerate(layers)},
        intervals=rows["teleport_distance_ratio_per_layer"]["intervals"],
        resampled=label,
    )
    rows["teleport_best_layers"] = best
    rows["teleport_best_is_intermediate"] = row(
        bool(len(layers) > 2 and layers[0] < ranking[0] < layers[-1]), True,
        "whether the layer with the lowest median distance ratio lies strictly between the first and last teleport layers",
    )
    final = {}
    for layer in layers:
        trajectories = np.asarray(groups[layer]["trajectories"], np.float64)
        control = np.asarray(groups[layer]["control"], np.float64)
        final[str(layer)] = float(np.mean(np.sum(np.square(trajectories[:, -1] - control[-1]), axis=-1)))
    rows["teleport_final_distance_per_layer"] = row(
        final, "trajectories teleported at layers 0 and 31 end far from the control",
        "per teleport layer, mean over grid points of the squared PC1-PC2 distance to the control at the last sublayer (2L-1)",
    )
    shape_metrics = ["distance_ratio", "spread_ratio", "alignment"]
    scaled_what = "positions at sublayer s divided by the spread of the corpus states at s"
    if scaled:
        rows.update(_set_rows(
            groups, layers, "", "scaled_", "teleport_scaled", f"teleported grid, {scaled_what}", indices, label, shape_metrics,
        ))
    sample_sizes = [len(groups[layer].get("sample_trajectories", ())) for layer in layers]
    if min(sample_sizes) > 0:
        sample_indices = bootstrap_indices(sample_sizes[0], n_resamples, seed)
        sample_label = resampled_label("corpus samples written in, the same draw at every layer", n_resamples, seed)
        what = "sample control (another corpus sample's state at 2l written in)"
        rows.update(_set_rows(
            groups, layers, "sample_", "sample_", "teleport_sample", f"{what} (PC units)", sample_indices, sample_label, list(METRICS),
        ))
        if scaled:
            rows.update(_set_rows(
                groups, layers, "sample_", "sample_scaled_", "teleport_sample_scaled", f"{what}, {scaled_what}",
                sample_indices, sample_label, shape_metrics,
            ))
    return rows


def check_layer_sets(groups: Mapping[int, Mapping[str, np.ndarray]], names: Sequence[str] = ("trajectories",)) -> None:
    """Every layer must hold the same number of points in each set (a paired bootstrap needs it)."""
    for name in names:
        sizes = {layer: len(group.get(name, ())) for layer, group in groups.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"teleport layers hold different numbers of {name}: {sizes}; rerun the teleport layers.")
