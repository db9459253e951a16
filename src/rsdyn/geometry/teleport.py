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
defined in :mod:`rsdyn.geometry.teleport_metrics` and computed when the layers are gathered, so
that ``arrow_sublayers`` (the horizon) reruns no forward.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rsdyn.geometry.settings import TeleportError, check_layers
from rsdyn.geometry.teleport_grid import PER_LAYER, check_range
from rsdyn.models.interventions import (
    control_states,
    layer_input_hook,
    layers_skipped,
    prefix_cache,
    prepare,
    relative_difference,
)
from rsdyn.models.recorder import ResidualRecorder

log = logging.getLogger(__name__)


def to_residual(points: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Residual-stream vectors x = z V[:2] + mu of PC1-PC2 points z: float64 (P, D)."""
    return np.asarray(points, np.float64) @ np.asarray(components[:2], np.float64) + np.asarray(mean, np.float64)


def project_pc12(states: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """PC1-PC2 scores (h - mu) V[:2]^T of states (..., D): float64 (..., 2)."""
    centred = np.asarray(states, np.float64) - np.asarray(mean, np.float64)
    return centred @ np.asarray(components[:2], np.float64).T


# --------------------------------------------------------------------------- validation


def validate_teleport(settings: Mapping[str, Any], n_layers: int, tokenizer, model_name: str = "the model") -> np.ndarray:
    """Check the ``teleport`` settings against the model before any compute.

    Checks the layers (0..n_layers-1), ``grid_n`` (>= 2), ``range`` (null, ``per_layer``
    or [r_min, r_max] with r_min < r_max), ``range_sd`` (> 0), ``margin`` (>= 0),
    ``arrow_sublayers`` (>= 1), ``sample_control`` (>= 0), ``seed`` (an integer) and that
    the prompt has at least one token after BOS. Returns the prompt's token ids (BOS
    first, as the corpus) as int64 (T,).
    """
    from rsdyn.capture.corpus import tokenize

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


def _prepare(model, prompt_ids, layer: int, family: str):
    """:func:`rsdyn.models.interventions.prepare`, with ``layer`` checked against the model."""
    prepared = prepare(model, prompt_ids, family)
    check_layers([layer], len(prepared[1]), type(model).__name__)
    return prepared


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
        layers_skipped(layers[:layer]),
        layer_input_hook(layers[layer], substitute),
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
    with ResidualRecorder(model, family) as recorder, layer_input_hook(layers[layer], overwrite):
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


