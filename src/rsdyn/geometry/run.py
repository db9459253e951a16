"""Geometry stage entries, one per rule, each reading its input stores and writing its
output store: the PCA of the pooled states (:func:`run_pca`, rule ``pca``), one teleport
layer (:func:`run_teleport_layer`, rule ``teleport_layer``) and the gather of the layers
with their recovery metrics (:func:`run_teleport_gather`, rule ``teleport_gather``);
:func:`read_teleport` reads ``teleport.zarr`` back."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.core.linalg import choose_solver
from rsdyn.geometry.pca import check_pca_settings, pca_of_states
from rsdyn.geometry.settings import TeleportError
from rsdyn.geometry.teleport import (
    check_basis,
    project_pc12,
    teleport_layer,
    validate_teleport,
)
from rsdyn.geometry.teleport_grid import (
    PER_LAYER,
    grid_points,
    grid_range_for,
    sample_indices,
)
from rsdyn.geometry.teleport_metrics import MSE_DEFINITION, data_spread, layer_metrics
from rsdyn.models.interventions import control_states

log = logging.getLogger(__name__)


def read_sample_states(activations_path: str | Path, condition: str, layer: int, indices: np.ndarray) -> np.ndarray:
    """The states at sublayer 2l of the capture's sequences ``indices``: float32 (S, D)."""
    from rsdyn.core.store import open_group

    group = open_group(activations_path)
    if condition not in group:
        raise TeleportError(f"The capture at {activations_path} has no {condition!r} array for the sample control.")
    return np.asarray(group[condition][:, 2 * layer, :])[np.asarray(indices, dtype=np.int64)]


def teleport_layer_arrays(
    model_dir: str | Path,
    pca_path: str | Path,
    settings: Mapping[str, Any],
    layer: int,
    family: str = "auto",
    activations_path: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The raw arrays of one layer (grid, its trajectories, the control, the grid's range
    ``grid_range`` (2, 2), the corpus states' spread per sublayer ``data_spread`` (2L,)
    and, with ``sample_control`` > 0, ``sample_indices`` and ``sample_trajectories``) and
    their attributes.

    Everything is checked (layer against the model's count, grid, range, prompt, PCA
    width, sample count) before the weights are loaded. ``settings``: the run's
    ``teleport`` section (``device``, ``dtype`` optional: auto). The sample control reads
    the capture at ``activations_path`` (its PCA condition).
    """
    from rsdyn.core.store import open_group
    from rsdyn.models.registry import layer_count
    from rsdyn.models.weights import (
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
    )

    n_layers = layer_count(model_dir)
    if n_layers is None:
        raise FileNotFoundError(f"No converted model at {model_dir}: run the model rule first.")
    name = Path(model_dir).name
    prompt_ids = validate_teleport({**settings, "layers": [layer]}, n_layers, load_tokenizer(model_dir), name)
    pca = open_group(pca_path)
    mean, components = pca["mean"][...], pca["components"][:2]
    projection = pca["projection"][...]
    grid_range_for(settings, projection, layer)  # fails here, before the weights load, if the range cannot be built
    n_control = int(settings.get("sample_control", 0))
    indices = sample_indices(projection.shape[0], n_control, int(settings.get("seed", 0)))
    samples = None
    if n_control:
        if activations_path is None:
            raise TeleportError("teleport.sample_control > 0 needs the capture (activations.zarr) as an input.")
        samples = read_sample_states(activations_path, pca.attrs.get("condition", "original"), layer, indices)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    check_basis(mean, components, config.get("text_config", config).get("hidden_size", config.get("hidden_size")))
    device = resolve_device(settings.get("device", "auto"), "teleport.device")
    dtype = resolve_dtype(settings.get("dtype", "auto"), device)
    model, _, provenance = load_model(model_dir, device, dtype)
    control = project_pc12(control_states(model, prompt_ids, family).cpu().numpy()[2 * layer], mean, components)
    value_range = grid_range_for(settings, projection, layer, centre=control)
    points = grid_points(value_range, settings.get("grid_n", 10))
    log.info("teleporting %d points and %d samples into layer %d of %s (%s, %s)", len(points), n_control, layer, name, device, dtype)
    arrays = teleport_layer(model, prompt_ids, layer, points, mean, components, family, sample_states=samples)
    arrays["grid_range"] = value_range.astype(np.float32)
    arrays["data_spread"] = data_spread(projection).astype(np.float32)
    if n_control:
        arrays["sample_indices"] = indices.astype(np.int32)
    attrs = {
        "layer": int(layer),
        "n_layers": n_layers,
        "prompt": settings["prompt"],
        "prompt_ids": [int(i) for i in prompt_ids],
        "grid_n": int(settings.get("grid_n", 10)),
        "range": settings.get("range", PER_LAYER),
        "range_sd": settings.get("range_sd", 3.0),
        "sample_control": n_control,
        "seed": int(settings.get("seed", 0)),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "model": provenance,
    }
    return arrays, attrs


def gather_layers(paths: Mapping[int, str | Path], arrow_sublayers: int = 12) -> dict[str, dict[str, np.ndarray]]:
    """``{f"layer_{l}": arrays}`` from the per-layer stores, in layer order, each with the
    recovery metrics over the horizon of ``arrow_sublayers``
    (:func:`rsdyn.geometry.teleport_metrics.layer_metrics`)."""
    from rsdyn.core.store import read_group

    out = {}
    for layer in sorted(paths, key=int):
        arrays = read_group(paths[layer])
        arrays.update(layer_metrics(arrays, int(layer), arrow_sublayers))
        out[f"layer_{int(layer)}"] = arrays
    return out


def gather_attrs(paths: Mapping[int, str | Path]) -> dict[str, Any]:
    """Attributes of ``teleport.zarr``: those shared by every layer store, plus ``layers``."""
    from rsdyn.core.store import open_group

    per_layer = [dict(open_group(paths[layer]).attrs) for layer in sorted(paths, key=int)]
    shared = {key: value for key, value in per_layer[0].items() if all(attrs.get(key) == value for attrs in per_layer)}
    shared.pop("layer", None)
    shared["layers"] = sorted(int(layer) for layer in paths)
    shared["mse_definition"] = MSE_DEFINITION
    return shared


def read_teleport(path: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """``{layer: arrays}`` of a ``teleport.zarr``."""
    from rsdyn.core.store import read_group

    groups = read_group(path)
    return {int(name.removeprefix("layer_")): arrays for name, arrays in sorted(groups.items()) if name.startswith("layer_")}


def pca_arrays(store_path, settings: Mapping[str, Any], n_resamples: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Read ``settings['condition']`` from the capture at ``store_path`` and return ``pca_of_states``.

    ``settings`` is the run's ``pca`` section (n_components, solver, condition,
    variance_threshold); ``n_resamples`` and ``seed`` the bootstrap's (``summary.bootstrap``,
    ``summary.seed``). Checks everything before reading the states, which are read in
    blocks from the store (see the module docstring).
    """
    from rsdyn.core.store import open_group

    group = open_group(store_path)
    condition = settings.get("condition", "original")
    if condition not in group:
        raise ValueError(
            f"The capture at {store_path} has no {condition!r} array; it holds "
            f"{', '.join(sorted(name for name, _ in group.arrays()))}."
        )
    array = group[condition]
    if array.ndim != 3:
        raise ValueError(f"The capture's {condition!r} array must be (N, 2L, D); got shape {array.shape}.")
    check_pca_settings(settings, *array.shape)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 0:
        raise ValueError(f"summary.bootstrap = {n_resamples!r}; it must be an integer >= 0.")
    return pca_of_states(
        array,
        settings["n_components"],
        settings.get("solver", "auto"),
        settings.get("variance_threshold", 0.9),
        n_resamples,
        seed,
    )


def pca_attrs(store_path, settings: Mapping[str, Any], n_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Attributes of ``pca.zarr``: provenance from the capture, the settings, the solver run
    and the bootstrap (resamples, seed)."""
    from rsdyn.core.store import open_group

    group = open_group(store_path)
    condition = settings.get("condition", "original")
    n_samples, n_sublayers, d_model = group[condition].shape
    attrs = {key: group.attrs[key] for key in ("model_name", "model_id", "n_layers", "d_model", "sublayer_names") if key in group.attrs}
    attrs.update(
        condition=condition,
        n_components=settings["n_components"],
        variance_threshold=settings.get("variance_threshold", 0.9),
        solver=choose_solver(n_samples * n_sublayers, d_model, settings["n_components"], settings.get("solver", "auto")),
        n_samples=n_samples,
        bootstrap=int(n_resamples),
        bootstrap_seed=int(seed),
        ev_definition="1 - ||X_s - recon_k(X_s)||^2 / ||X_s - mean(X_s)||^2 per sublayer s",
        within_definition="eigenvalues of each sublayer's own covariance (N - 1 denominator); participation ratio "
        "(sum lambda)^2 / sum lambda^2; components for the variance threshold of the sublayer's own variance",
    )
    return attrs




def run_pca(store_path, out_path, settings: Mapping[str, Any], n_resamples: int = 200, seed: int = 0) -> None:
    """Rule ``pca``: :func:`pca_arrays` and :func:`pca_attrs` of ``activations.zarr`` -> ``pca.zarr``."""
    from rsdyn.core.store import write_group

    attrs = pca_attrs(store_path, settings, n_resamples, seed)
    log.info("PCA of %s (%s solver, K = %d, %d resamples)", store_path, attrs["solver"], settings["n_components"], n_resamples)
    arrays = pca_arrays(store_path, settings, n_resamples, seed)
    write_group(out_path, arrays, attrs=attrs)
    log.info("pooled variance in %d components: %.4f", settings["n_components"], arrays["explained_variance_ratio"].sum())


def run_teleport_layer(
    model_dir, pca_path, activations_path, out_path, settings: Mapping[str, Any], layer: int, family: str = "auto",
    threads: int | None = None,
) -> None:
    """Rule ``teleport_layer``: :func:`teleport_layer_arrays` -> ``teleport/layer_{l}.zarr``."""
    import torch

    from rsdyn.core.store import write_group

    if threads:
        torch.set_num_threads(threads)
    arrays, attrs = teleport_layer_arrays(model_dir, pca_path, settings, layer, family, activations_path)
    write_group(out_path, arrays, attrs=attrs)
    log.info("layer %d: %d grid trajectories written", layer, len(arrays["trajectories"]))


def run_teleport_gather(paths: Mapping[int, str | Path], out_path, arrow_sublayers: int = 12) -> None:
    """Rule ``teleport_gather``: the per-layer stores ``{layer: path}`` -> ``teleport.zarr``
    (one group ``layer_{l}`` each, with the recovery metrics over ``arrow_sublayers``)."""
    from rsdyn.core.store import write_group

    arrays = gather_layers(paths, arrow_sublayers)
    write_group(out_path, arrays, attrs=gather_attrs(paths))
    for name, group in arrays.items():
        log.info("%s: horizon %d, median distance ratio %.3g", name, group["horizon"], float(np.nanmedian(group["distance_ratio"])))
