"""Teleportation (paper §2.8, Fig. 4D): write a chosen state into the residual stream and
watch where the rest of the model takes it.

A uniform n x n grid of points z in the PC1-PC2 plane of ``pca.zarr`` is mapped back to
the residual space, x = z V[:2] + mu (V the principal axes as rows, mu the pooled mean),
and written into the residual stream entering decoder layer ``l`` (the input of its
attention block, sublayer 2l) at the control prompt's last token. The rest of the model
runs unchanged and the last token's residual stream is recorded at every sublayer from
2l on and projected back on PC1-PC2.

Prefix reuse: by causal attention the prompt's earlier positions do not depend on the
last token, so they run once (batch 1) and their key/value cache is reused. The grid then
goes through the model as one batch of single-token rows: the cache is repeated over the
rows, the forwards of layers ``< l`` are replaced by the identity (they are computed once,
for the prompt, and their result for the last token is overwritten anyway) and layer
``l``'s input is the grid point. The model's own forward still builds positions, rotary
embeddings and masks (sliding windows included), so nothing of the model is
reimplemented. :func:`naive_teleport` is the slow reference: one full forward of the
prompt per point with the last position of layer ``l``'s input overwritten.

Grid range (``teleport.range``): ``null`` = one range for every layer, the span of all
projected states widened by ``margin`` (the paper's single [r_min, r_max]); ``[r_min,
r_max]`` = that range; ``per_layer`` (the default) = each layer's own scale: PC k of the
grid of layer l spans the control's state at 2l +- ``range_sd`` standard deviations of
the projected corpus states at sublayer 2l.

Sample control (``teleport.sample_control`` > 0): the states at sublayer 2l of that many
corpus sequences (a seeded choice, the same at every layer, from the capture's PCA
condition) are written in instead of grid points, the paper's own suggestion ("swapping
of activations from one input data sample to another"): full-dimensional, on-distribution
perturbations, where a grid point lies in the PC1-PC2 plane through the pooled mean.

Units: PC coordinates are in the residual stream's units (scores on unit-norm axes). The
recovery metrics (distance ratio, spread ratio, alignment, MSE over a fixed horizon) are
defined in :mod:`rsdyn.teleport_metrics` and computed when the layers are gathered, so
that ``arrow_sublayers`` (the horizon) reruns no forward.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rsdyn.adapters import adapter_for, base_model, decoder_layers, model_family
from rsdyn.capture import ResidualRecorder
from rsdyn.teleport_grid import (  # noqa: F401 - re-exported
    PER_LAYER,
    TeleportError,
    axis_ranges,
    check_range,
    data_range,
    grid_for,
    grid_points,
    grid_range_for,
    layer_data_range,
    sample_indices,
)
from rsdyn.teleport_metrics import MSE_DEFINITION, data_spread, layer_metrics, mse_to_control, summary_teleport  # noqa: F401

log = logging.getLogger(__name__)



def to_residual(points: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Residual-stream vectors x = z V[:2] + mu of PC1-PC2 points z: float64 (P, D)."""
    return np.asarray(points, np.float64) @ np.asarray(components[:2], np.float64) + np.asarray(mean, np.float64)


def project_pc12(states: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """PC1-PC2 scores (h - mu) V[:2]^T of states (..., D): float64 (..., 2)."""
    centred = np.asarray(states, np.float64) - np.asarray(mean, np.float64)
    return centred @ np.asarray(components[:2], np.float64).T


# --------------------------------------------------------------------------- validation


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


def validate_teleport(settings: Mapping[str, Any], n_layers: int, tokenizer, model_name: str = "the model") -> np.ndarray:
    """Check the ``teleport`` settings against the model before any compute.

    Checks the layers (0..n_layers-1), ``grid_n`` (>= 2), ``range`` (null, ``per_layer``
    or [r_min, r_max] with r_min < r_max), ``range_sd`` (> 0), ``margin`` (>= 0),
    ``arrow_sublayers`` (>= 1), ``sample_control`` (>= 0), ``seed`` (an integer) and that
    the prompt has at least one token after BOS. Returns the prompt's token ids (BOS
    first, as the corpus) as int64 (T,).
    """
    from rsdyn.corpus import tokenize

    check_layers(settings["layers"], n_layers, model_name)
    n = settings.get("grid_n", 10)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise TeleportError(f"teleport.grid_n = {n!r}; it must be an integer >= 2.")
    value_range = settings.get("range", PER_LAYER)
    if value_range == PER_LAYER:
        range_sd = settings.get("range_sd", 3.0)
        if isinstance(range_sd, bool) or not isinstance(range_sd, (int, float)) or not range_sd > 0:
            raise TeleportError(f"teleport.range_sd = {range_sd!r}; it must be a number > 0.")
    elif value_range is not None:
        check_range(value_range)
    for key in ("sample_control", "seed"):
        value = settings.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise TeleportError(f"teleport.{key} = {value!r}; it must be an integer >= 0.")
    margin = settings.get("margin", 0.1)
    if not isinstance(margin, (int, float)) or not margin >= 0:
        raise TeleportError(f"teleport.margin = {margin!r}; it must be a number >= 0.")
    arrows = settings.get("arrow_sublayers", 12)
    if isinstance(arrows, bool) or not isinstance(arrows, (int, np.integer)) or arrows < 1:
        raise TeleportError(f"teleport.arrow_sublayers = {arrows!r}; it must be an integer >= 1.")
    prompt = settings.get("prompt")
    if not isinstance(prompt, str):
        raise TeleportError(f"teleport.prompt = {prompt!r}; it must be a string.")
    (ids,) = tokenize([prompt], tokenizer)
    if len(ids) < 2:
        raise TeleportError(
            f"teleport.prompt = {prompt!r} tokenises to no tokens; give a prompt with at least one token."
        )
    return ids


def check_basis(mean: np.ndarray, components: np.ndarray, d_model: int) -> None:
    """``mean`` (D,) and ``components`` (K >= 2, D) must match the model's width D."""
    if np.ndim(mean) != 1 or np.ndim(components) != 2 or np.shape(components)[0] < 2:
        raise TeleportError(
            f"The PCA basis must be mean (D,) and components (K >= 2, D); got {np.shape(mean)} and {np.shape(components)}."
        )
    if np.shape(mean)[0] != d_model or np.shape(components)[1] != d_model:
        raise TeleportError(
            f"The PCA basis has width {np.shape(components)[1]} but the model's residual stream has "
            f"{d_model} units; compute pca.zarr from this model's capture."
        )
    if not (np.isfinite(mean).all() and np.isfinite(components[:2]).all()):
        raise TeleportError("The PCA mean or leading components contain NaN or infinite values.")


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise TeleportError(f"Teleport points must be a non-empty (P, 2) array of PC1-PC2 coordinates; got shape {points.shape}.")
    if not np.isfinite(points).all():
        raise TeleportError("Teleport points contain NaN or infinite values.")
    return points


# --------------------------------------------------------------------------- hooks


def _identity_layer(hidden_states, *args, **kwargs):  # noqa: ARG001 - decoder layer signature
    """A decoder layer that returns its input (transformers 5.x layers return a tensor)."""
    return hidden_states


@contextlib.contextmanager
def _layers_skipped(layers: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Replace the forward of ``layers`` by the identity; restore it in ``finally``."""
    saved: list[tuple[torch.nn.Module, Any]] = []
    try:
        for layer in layers:
            saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = _identity_layer
        yield
    finally:
        for layer, previous in saved:
            if previous is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = previous


@contextlib.contextmanager
def _layer_input_hook(layer: torch.nn.Module, function) -> Iterator[None]:
    """Forward pre-hook on a decoder layer: ``function(hidden_states)`` returns the
    replacement (or None to keep it); removed in ``finally``."""

    def hook(module, args, kwargs):  # noqa: ARG001 - hook signature
        hidden = args[0] if args else kwargs["hidden_states"]
        new = function(hidden)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _prepare(model, prompt_ids, layer: int, family: str):
    """Common checks; returns ``(decoder, layers, device, dtype, ids (1, T))``."""
    adapter_for(model_family(model, family))  # unknown families fail here
    layers = decoder_layers(model)
    check_layers([layer], len(layers), type(model).__name__)
    ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long).reshape(1, -1)
    if ids.shape[1] == 0:
        raise TeleportError("The control prompt has no tokens.")
    parameter = next(model.parameters())
    return base_model(model), layers, parameter.device, parameter.dtype, ids.to(parameter.device)


@torch.inference_mode()
def control_states(model, prompt_ids, family: str = "auto") -> torch.Tensor:
    """Last-token residual stream of the unmodified prompt at all 2L sublayers: float32 (2L, D)."""
    decoder, _, device, _, ids = _prepare(model, prompt_ids, 0, family)
    with ResidualRecorder(model, family) as recorder:
        recorder.reset()
        recorder.positions = torch.full((1,), ids.shape[1] - 1, dtype=torch.long, device=device)
        decoder(input_ids=ids, use_cache=False)
        return recorder.states[0].clone()


@torch.inference_mode()
def prefix_cache(model, prompt_ids, family: str = "auto"):
    """Key/value cache of every layer for the prompt without its last token (None when the
    prompt is a single token): what the last token attends to, the same for every grid point."""
    decoder, _, _, _, ids = _prepare(model, prompt_ids, 0, family)
    if ids.shape[1] < 2:
        return None
    return decoder(input_ids=ids[:, :-1], use_cache=True).cache


@torch.inference_mode()
def teleported_states(
    model, prompt_ids, layer: int, residual_points: np.ndarray, family: str = "auto", cache=None
) -> torch.Tensor:
    """Batched teleport with prefix reuse: last-token states float32 (P, 2L-2l, D) at
    sublayers 2l..2L-1 after writing each row of ``residual_points`` (P, D) into the
    input of ``layer`` at the prompt's last position.

    The prompt's other positions do not depend on the last token (causal attention), so
    they run once (``cache`` from :func:`prefix_cache`, computed here when None) and the
    batch holds only the last token: the cache is repeated over the P rows, the forwards
    of layers below ``layer`` are replaced by the identity and ``layer``'s input is the
    grid point. The model's own forward builds positions, rotary embeddings and masks.
    """
    decoder, layers, device, dtype, ids = _prepare(model, prompt_ids, layer, family)
    if cache is None:
        cache = prefix_cache(model, prompt_ids, family)
    points = torch.as_tensor(np.asarray(residual_points), device=device).to(dtype)
    n_points, length = points.shape[0], ids.shape[1]
    past = None
    if cache is not None:
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(n_points)

    def substitute(hidden):
        return points.to(hidden.dtype).reshape(n_points, 1, -1)

    with (
        ResidualRecorder(model, family) as recorder,
        _layers_skipped(layers[:layer]),
        _layer_input_hook(layers[layer], substitute),
    ):
        recorder.reset()
        recorder.positions = torch.zeros((n_points,), dtype=torch.long, device=device)
        decoder(
            input_ids=ids[:, -1:].expand(n_points, 1),
            position_ids=torch.full((n_points, 1), length - 1, dtype=torch.long, device=device),
            cache=past,
            use_cache=past is not None,
        )
        return recorder.states[:, 2 * layer :].clone()


@torch.inference_mode()
def naive_states(model, prompt_ids, layer: int, residual_points: np.ndarray, family: str = "auto") -> torch.Tensor:
    """Slow reference of :func:`teleported_states`: one full forward of the prompt per point,
    with the last position of ``layer``'s input overwritten. float32 (P, 2L-2l, D)."""
    decoder, layers, device, dtype, ids = _prepare(model, prompt_ids, layer, family)
    points = torch.as_tensor(np.asarray(residual_points), device=device).to(dtype)
    current: dict[str, torch.Tensor] = {}

    def overwrite(hidden):
        new = hidden.clone()
        new[:, -1] = current["point"].to(hidden.dtype)
        return new

    out = []
    with ResidualRecorder(model, family) as recorder, _layer_input_hook(layers[layer], overwrite):
        for point in tqdm(points, desc=f"naive teleport layer {layer}", unit="point", leave=False):
            current["point"] = point
            recorder.reset()
            recorder.positions = torch.full((1,), ids.shape[1] - 1, dtype=torch.long, device=device)
            decoder(input_ids=ids, use_cache=False)
            out.append(recorder.states[0, 2 * layer :].clone())
    return torch.stack(out)


def _result(points, states, control_states, mean, components) -> dict[str, np.ndarray]:
    """The raw arrays of a layer: grid points, their trajectories and the control, in PC1-PC2;
    rows of ``states`` past the grid points are the sample control's."""
    projected = project_pc12(states.cpu().numpy(), mean, components).astype(np.float32)
    control = project_pc12(control_states.cpu().numpy(), mean, components)
    out = {
        "grid_points": points.astype(np.float32),
        "trajectories": projected[: len(points)],
        "control": control.astype(np.float32),
    }
    if len(projected) > len(points):
        out["sample_trajectories"] = projected[len(points) :]
    return out


def teleport_layer(
    model,
    prompt_ids,
    layer: int,
    points: np.ndarray,
    mean: np.ndarray,
    components: np.ndarray,
    family: str = "auto",
    verify: bool = True,
    sample_states: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Teleport every PC1-PC2 point of ``points`` (P, 2) into ``layer`` in one batch, with
    the full-dimensional ``sample_states`` (S, D) of the sample control in the same batch.

    Returns the raw ``teleport.zarr`` group arrays, float32: ``grid_points`` (P, 2),
    ``trajectories`` (P, 2L-2l, 2) (PC1-PC2 of the last token at sublayers 2l..2L-1),
    ``control`` (2L, 2) (the unmodified prompt) and, with samples, ``sample_trajectories``
    (S, 2L-2l, 2). With ``verify`` the first point is also run the slow way (one extra
    forward) and compared (:func:`verify_against_full_forward`).
    """
    points = _check_points(points)
    d_model = model.config.get_text_config().hidden_size
    check_basis(mean, components, d_model)
    control = control_states(model, prompt_ids, family)
    residual = to_residual(points, mean, components)
    if sample_states is not None and len(sample_states):
        sample_states = np.asarray(sample_states, dtype=np.float64)
        if sample_states.ndim != 2 or sample_states.shape[1] != d_model or not np.isfinite(sample_states).all():
            raise TeleportError(f"Sample-control states must be finite (S, {d_model}); got shape {sample_states.shape}.")
        residual = np.concatenate([residual, sample_states])
    states = teleported_states(model, prompt_ids, layer, residual, family)
    if verify:
        verify_against_full_forward(model, prompt_ids, layer, residual[:1], states[:1], family)
    return _result(points, states, control, mean, components)


#: largest allowed |batched - full forward| relative to the largest activation, per compute dtype
VERIFY_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def relative_difference(model, states: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """max |states - reference| over the largest |reference|, and the ``VERIFY_TOLERANCE`` of
    the model's compute dtype it must not exceed."""
    scale = float(reference.abs().max().clamp_min(1e-30))
    difference = float((states.to(reference.device, reference.dtype) - reference).abs().max()) / scale
    return difference, VERIFY_TOLERANCE.get(next(model.parameters()).dtype, 1e-2)


def verify_against_full_forward(model, prompt_ids, layer: int, residual_point, batched_states, family: str = "auto") -> float:
    """Recompute one point with a full forward and raise if the batched states differ by
    more than ``VERIFY_TOLERANCE`` (relative to the largest activation): a guard against a
    model or transformers version whose layers or cache do not follow the conventions the
    prefix reuse relies on. Returns the relative difference."""
    reference = naive_states(model, prompt_ids, layer, residual_point, family)
    difference, tolerance = relative_difference(model, batched_states, reference)
    if not difference <= tolerance:
        raise RuntimeError(
            f"The batched teleport into layer {layer} differs from a full forward by {difference:.2e} of the "
            f"largest activation (allowed {tolerance:g}); this model or transformers version breaks the "
            "prefix-reuse conventions (decoder layers returning a tensor, a DynamicCache)."
        )
    log.info("layer %d: batched vs full forward, max relative difference %.2e", layer, difference)
    return difference


def naive_teleport(
    model, prompt_ids, layer: int, points: np.ndarray, mean: np.ndarray, components: np.ndarray, family: str = "auto"
) -> dict[str, np.ndarray]:
    """:func:`teleport_layer` computed the slow way (one full forward per point); same output."""
    points = _check_points(points)
    check_basis(mean, components, model.config.get_text_config().hidden_size)
    control = control_states(model, prompt_ids, family)
    states = naive_states(model, prompt_ids, layer, to_residual(points, mean, components), family)
    return _result(points, states, control, mean, components)


# --------------------------------------------------------------------------- stage


def read_sample_states(activations_path: str | Path, condition: str, layer: int, indices: np.ndarray) -> np.ndarray:
    """The states at sublayer 2l of the capture's sequences ``indices``: float32 (S, D)."""
    from rsdyn.store import open_group

    group = open_group(activations_path)
    if condition not in group:
        raise TeleportError(f"The capture at {activations_path} has no {condition!r} array for the sample control.")
    return np.asarray(group[condition][:, 2 * layer, :])[np.asarray(indices, dtype=np.int64)]


def run_teleport_layer(
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
    from transformers import AutoTokenizer

    from rsdyn.models import layer_count, load_model, resolve_device, resolve_dtype
    from rsdyn.store import open_group

    n_layers = layer_count(model_dir)
    if n_layers is None:
        raise FileNotFoundError(f"No converted model at {model_dir}: run the model rule first.")
    name = Path(model_dir).name
    prompt_ids = validate_teleport({**settings, "layers": [layer]}, n_layers, AutoTokenizer.from_pretrained(model_dir), name)
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
    (:func:`rsdyn.teleport_metrics.layer_metrics`)."""
    from rsdyn.store import read_group

    out = {}
    for layer in sorted(paths, key=int):
        arrays = read_group(paths[layer])
        arrays.update(layer_metrics(arrays, int(layer), arrow_sublayers))
        out[f"layer_{int(layer)}"] = arrays
    return out


def gather_attrs(paths: Mapping[int, str | Path]) -> dict[str, Any]:
    """Attributes of ``teleport.zarr``: those shared by every layer store, plus ``layers``."""
    from rsdyn.store import open_group

    per_layer = [dict(open_group(paths[layer]).attrs) for layer in sorted(paths, key=int)]
    shared = {key: value for key, value in per_layer[0].items() if all(attrs.get(key) == value for attrs in per_layer)}
    shared.pop("layer", None)
    shared["layers"] = sorted(int(layer) for layer in paths)
    shared["mse_definition"] = MSE_DEFINITION
    return shared


def read_teleport(path: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """``{layer: arrays}`` of a ``teleport.zarr``."""
    from rsdyn.store import read_group

    groups = read_group(path)
    return {int(name.removeprefix("layer_")): arrays for name, arrays in sorted(groups.items()) if name.startswith("layer_")}
