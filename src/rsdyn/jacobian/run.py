"""Jacobian stage entry (rule ``jacobian``): the sublayer Jacobians of the last token of
``jacobian.n_samples`` captured sequences, their spectra and the cumulative product, for
the trained weights and each baseline (``initial``: freshly initialised weights of the
same config, per init seed; ``svd_matched`` and ``norm_matched``: surrogates of the
trained updates), as the arrays and attributes of ``jacobian.zarr``;
:func:`read_jacobian` reads it back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.jacobian.jacobian import (
    DEFINITIONS,
    DTYPES,
    baseline_positions,
    product_depths,
    select_samples,
    transition_names,
    transition_types,
)
from rsdyn.jacobian.settings import WEIGHTS_TRAINED, check_settings
from rsdyn.jacobian.surrogates import SURROGATES
from rsdyn.models.adapters import decoder_layers, model_family

log = logging.getLogger(__name__)

#: defaults of the keys a section written before they existed may lack
DEFAULTS = {
    "baselines": [], "init_seeds": [0], "baseline_samples": None, "surrogate_draws": 1, "dtype": "float32",
    "spectra_dtype": "float32", "spectra_device": "auto", "attention": "last_token", "mlp": "gated", "mode": "rev", "chunk_size": None,
    "device": "auto",
}


def jacobian_arrays(
    model_dir: str | Path, activations_path: str | Path, settings: Mapping[str, Any], family: str = "auto", threads: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays and attributes of ``jacobian.zarr``: one group per weights (``trained``
    and each baseline), ``sample_indices`` (rows of ``activations.zarr``, whose
    ``original_ids`` are the token ids used) and ``baseline_positions`` (positions in
    ``sample_indices`` of the baselines' sequences). ``settings``: the run's ``jacobian``
    section. On the CPU the sequences run in ``threads`` forked processes on one torch
    thread each (:func:`rsdyn.jacobian.sample.run_tasks`)."""
    from rsdyn.core.store import open_group
    from rsdyn.jacobian.devices import resolve_spectra_device
    from rsdyn.jacobian.sample import SpectraOptions, design_groups
    from rsdyn.models.weights import load_model, resolve_device

    settings = {**DEFAULTS, **settings}
    check_settings(settings)
    store = open_group(activations_path)
    all_ids = store["original_ids"][...]
    indices = select_samples(len(all_ids), settings["n_samples"], settings["seed"])
    sequences = [row[row >= 0].astype(np.int64) for row in all_ids[indices]]
    baselines = list(settings["baselines"])
    positions = baseline_positions(len(indices), min(settings["baseline_samples"] or len(indices), len(indices)), settings["seed"])
    device = resolve_device(settings["device"], "jacobian.device")
    dtype, spectra_dtype = DTYPES[settings["dtype"]], DTYPES[settings["spectra_dtype"]]
    model, _, provenance = load_model(model_dir, device, dtype)
    family = model_family(model, family)
    d_model = int(model.config.get_text_config().hidden_size)
    spectra_device = resolve_spectra_device(settings["spectra_device"], device, d_model, spectra_dtype)
    options = SpectraOptions(
        family=family, mode=settings["mode"], chunk_size=settings["chunk_size"], attention=settings["attention"], mlp=settings["mlp"],
        spectra_device=spectra_device, spectra_dtype=spectra_dtype, seed=int(settings["seed"]),
        surrogates=tuple(kind for kind in baselines if kind in SURROGATES), surrogate_draws=int(settings["surrogate_draws"]),
    )
    workers = threads if device == "cpu" else 1
    init_seeds = [int(seed) for seed in settings["init_seeds"]] if "initial" in baselines else []
    groups, seconds = design_groups(model, sequences, indices, positions, init_seeds, options, workers, threads)
    n_layers = len(decoder_layers(model))
    attrs = {
        "weights": [WEIGHTS_TRAINED, *baselines],
        "n_layers": n_layers,
        "d_model": d_model,
        "transitions": transition_names(n_layers),
        "transition_types": transition_types(n_layers),
        "product_depths": product_depths(2 * n_layers),
        "n_samples": len(indices),
        "baseline_samples": len(positions),
        "init_seeds": init_seeds,
        "surrogate_draws": options.surrogate_draws if options.surrogates else 0,
        "seed": int(settings["seed"]),
        "dtype": str(dtype).removeprefix("torch."),
        "spectra_dtype": str(spectra_dtype).removeprefix("torch."),
        "device": device,
        "spectra_device": spectra_device,
        "attention": options.attention,
        "mlp": options.mlp,
        "mode": options.mode,
        "family": family,
        "model": provenance,
        "seconds": seconds,
        "definitions": DEFINITIONS,
    }
    log.info("sequences in %d process(es), each on %d torch thread(s)", workers, max(1, threads // max(1, workers)))
    for weights, group_seconds in seconds.items():
        log.info("%s: %.1f s, %.1f CPU s", weights, group_seconds["wall_s"], group_seconds["cpu_s"])
    return {"sample_indices": indices, "baseline_positions": positions, **groups}, attrs


def read_jacobian(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arrays, attrs)`` of a ``jacobian.zarr``."""
    from rsdyn.core.store import open_group, read_group

    return read_group(path), dict(open_group(path).attrs)


def run_jacobian(
    model_dir: str | Path, activations_path: str | Path, out_path: str | Path, settings: Mapping[str, Any],
    family: str = "auto", threads: int = 1,
) -> None:
    """Rule ``jacobian``: :func:`jacobian_arrays` -> ``jacobian.zarr``."""
    from rsdyn.core.store import write_group

    arrays, attrs = jacobian_arrays(model_dir, activations_path, settings, family, threads=threads)
    write_group(out_path, arrays, attrs=attrs)
    log.info("wrote %s (%s)", out_path, ", ".join(attrs["weights"]))
