"""Jacobian stage entry (rule ``jacobian``): the sublayer Jacobians of the last token of
``jacobian.n_samples`` captured sequences, their spectra and the cumulative product, for
the trained weights and each baseline (``initial``: freshly initialised weights of the
same config), as the arrays and attributes of ``jacobian.zarr``; :func:`read_jacobian`
reads it back."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.jacobian.jacobian import (
    DEFINITIONS,
    DTYPES,
    initial_model,
    select_samples,
    transition_names,
    transition_types,
    weights_spectra,
)
from rsdyn.jacobian.settings import WEIGHTS_TRAINED, check_settings
from rsdyn.models.adapters import decoder_layers, model_family

log = logging.getLogger(__name__)


def jacobian_arrays(
    model_dir: str | Path, activations_path: str | Path, settings: Mapping[str, Any], family: str = "auto", threads: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays and attributes of ``jacobian.zarr``: one group per weights (``trained``
    and each baseline) and ``sample_indices`` (rows of ``activations.zarr``, whose
    ``original_ids`` are the token ids used). ``settings``: the run's ``jacobian`` section."""
    from rsdyn.core.store import open_group
    from rsdyn.models.weights import load_model, resolve_device

    check_settings(settings)
    store = open_group(activations_path)
    all_ids = store["original_ids"][...]
    indices = select_samples(len(all_ids), settings["n_samples"], settings["seed"])
    sequences = [row[row >= 0].astype(np.int64) for row in all_ids[indices]]
    device = resolve_device(settings.get("device", "auto"), "jacobian.device")
    dtype = DTYPES[settings.get("dtype", "float32")]
    model, _, provenance = load_model(model_dir, device, dtype)
    family = model_family(model, family)
    kwargs = {"family": family, "mode": settings.get("mode", "rev"), "chunk_size": settings.get("chunk_size"), "workers": threads}
    arrays: dict[str, Any] = {"sample_indices": indices}
    timings = {}
    for weights in (WEIGHTS_TRAINED, *settings.get("baselines", [])):
        start = time.perf_counter()
        network = model if weights == WEIGHTS_TRAINED else initial_model(model, settings["seed"])
        arrays[weights] = weights_spectra(network, sequences, desc=weights, **kwargs)
        timings[weights] = time.perf_counter() - start
        log.info("%s weights: %d samples in %.1f s", weights, len(sequences), timings[weights])
    n_layers = len(decoder_layers(model))
    attrs = {
        "weights": [WEIGHTS_TRAINED, *settings.get("baselines", [])],
        "n_layers": n_layers,
        "d_model": int(model.config.get_text_config().hidden_size),
        "transitions": transition_names(n_layers),
        "transition_types": transition_types(n_layers),
        "n_samples": len(indices),
        "seed": int(settings["seed"]),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "mode": kwargs["mode"],
        "family": family,
        "model": provenance,
        "seconds": timings,
        "definitions": DEFINITIONS,
    }
    return arrays, attrs


def read_jacobian(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arrays, attrs)`` of a ``jacobian.zarr``."""
    from rsdyn.core.store import open_group, read_group

    return read_group(path), dict(open_group(path).attrs)


def run_jacobian(
    model_dir: str | Path, activations_path: str | Path, out_path: str | Path, settings: Mapping[str, Any],
    family: str = "auto", threads: int = 1,
) -> None:
    """Rule ``jacobian``: :func:`jacobian_arrays` -> ``jacobian.zarr``."""
    import torch

    from rsdyn.core.store import write_group

    torch.set_num_threads(threads)
    arrays, attrs = jacobian_arrays(model_dir, activations_path, settings, family, threads=threads)
    write_group(out_path, arrays, attrs=attrs)
    log.info("wrote %s (%s weights)", out_path, ", ".join(attrs["weights"]))
