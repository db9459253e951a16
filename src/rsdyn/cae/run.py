"""CAE stage entry (rule ``cae``): split the sequences, train the compressing autoencoder
for every training seed at once (``cae.seeds``, :mod:`rsdyn.cae.batched`) on the run's
store (data in memory or streamed by :mod:`rsdyn.cae.data`), and write ``cae/``: the
stacked weights, the training curves, and ``embedding.zarr`` with the per-seed,
per-test-sequence arrays the intervals resample and the curves of Fig. 3
(:mod:`rsdyn.cae.evaluate`). Same config and thread count give identical numbers
(seeded split, weights and orders; ``torch.use_deterministic_algorithms``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rsdyn.cae.batched import BatchedAutoencoder, train_seeds
from rsdyn.cae.model import (
    CompressingAutoencoder,
    deterministic_torch,
    layer_widths,
    resolve_device,
)
from rsdyn.cae.settings import (
    DEFAULT_INPUT_SCALING,
    check_input_scaling,
    check_training_options,
    split_by_sequence,
    training_seeds,
)

CURVE_FIELDS = ["seed", "epoch", "train_loss", "val_loss", "grad_norm_max", "lr", "seconds"]


def check_cae_settings(settings: Mapping[str, Any], n_sequences: int, d_model: int) -> None:
    """Raise one clear ValueError when the cae settings cannot run on this capture."""
    from rsdyn.cae.settings import DATA_MODES

    layer_widths(d_model, settings["n_layers"])
    training_seeds(settings)
    check_input_scaling(settings.get("input_scaling", DEFAULT_INPUT_SCALING))
    check_training_options(settings.get("grad_clip"), settings.get("warmup_epochs", 0))
    split_by_sequence(n_sequences, settings["val_fraction"], settings["test_fraction"], settings["seed"])
    resolve_device(settings.get("device", "auto"))
    if settings.get("data", "auto") not in DATA_MODES:
        raise ValueError(f"cae.data = {settings['data']!r}; allowed: {', '.join(DATA_MODES)}.")


def run_cae(store_path, out_dir, settings: Mapping[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Train the CAE for every seed of ``cae.seeds`` on the capture at ``store_path`` and
    write ``out_dir`` atomically.

    ``settings`` is the run's ``cae`` section. ``out_dir`` receives ``model.safetensors``
    (every parameter with a leading seed axis, in the order of ``cae.seeds``, and the
    shared input map; ``load_cae`` gives one seed's model), ``training_curve.csv`` (one
    row per seed and epoch: seed, epoch, train_loss, val_loss, grad_norm_max, lr,
    seconds), ``embedding.zarr`` (the arrays of ``rsdyn.cae.evaluate.HeldOut.arrays``)
    and ``training.json`` (widths, split sizes, per-seed epochs, best epochs, losses,
    timing, data mode and placement). Returns the contents of ``training.json``. The data
    are read block by block (``rsdyn.cae.data``): in memory or streamed as ``cae.data``
    says, with the same numbers either way.
    """
    from safetensors.torch import save_file

    from rsdyn.cae.data import data_mode, data_placement, load_sources, training_moments
    from rsdyn.cae.evaluate import evaluate_seeds
    from rsdyn.cae.settings import DEFAULT_BLOCK_MB
    from rsdyn.core.store import (
        atomic_path,
        ignoring_snakemake_marker,
        open_group,
        write_group,
    )

    with ignoring_snakemake_marker():
        group = open_group(store_path)
    condition = settings.get("condition", "original")
    if condition not in group:
        raise ValueError(f"The capture at {store_path} has no {condition!r} array (cae.condition).")
    n_sequences, n_sublayers, d_model = group[condition].shape
    check_cae_settings(settings, n_sequences, d_model)
    device = resolve_device(settings.get("device", "auto"))
    if threads:
        torch.set_num_threads(int(threads))

    seeds = training_seeds(settings)
    split = split_by_sequence(n_sequences, settings["val_fraction"], settings["test_fraction"], settings["seed"])
    n_bytes = n_sequences * n_sublayers * d_model * 4
    mode = data_mode(settings.get("data", "auto"), n_bytes, settings.get("memory_gb", 2.0))
    placement = data_placement(device, n_bytes) if mode == "memory" else "stream"
    input_scaling = settings.get("input_scaling", DEFAULT_INPUT_SCALING)
    with deterministic_torch():
        sources = load_sources(store_path, condition, split, seed=settings["seed"], mode=mode,
                               workers=settings.get("loader_workers", 0), device=device,
                               block_mb=settings.get("block_mb", DEFAULT_BLOCK_MB),
                               placement="host" if placement == "host" else "device")
        model = BatchedAutoencoder.from_seeds(d_model, settings["n_layers"], seeds).to(device)
        pooled, sublayer = training_moments(sources["train"])
        model.set_input_moments(pooled.mean, pooled.variance, input_scaling)
        result = train_seeds(
            model,
            sources["train"],
            sources["val"],
            lr=settings["lr"],
            max_epochs=settings["max_epochs"],
            patience=settings["patience"],
            batch_size=settings["batch_size"],
            grad_clip=settings.get("grad_clip"),
            warmup_epochs=settings.get("warmup_epochs", 0),
        )
        held = evaluate_seeds(result.model, sources["test"], sublayer.mean, split["test"])
    arrays = held.arrays()
    sublayer_names = list(group.attrs.get("sublayer_names", [f"S{s}" for s in range(n_sublayers)]))
    epochs_run = [len(history) for history in result.history]
    info = {
        "model_name": group.attrs.get("model_name"),
        "condition": condition,
        "d_model": d_model,
        "n_layers": settings["n_layers"],
        "widths": result.model.widths,
        "seeds": seeds,
        "n_parameters_per_seed": sum(p[0].numel() for p in result.model.parameters()),
        "n_sequences": {name: len(rows) for name, rows in split.items()},
        "n_samples": {name: len(rows) * n_sublayers for name, rows in split.items()},
        "n_blocks": {name: len(source.dataset.blocks) for name, source in sources.items()},
        "data": mode,
        "placement": placement,
        "epochs": result.epochs,
        "epochs_run": epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "input_scaling": input_scaling,
        "input_scale_rms": float(result.model.loss_normaliser().sqrt()),
        "best_val_loss": result.best_val_loss,
        "test_loss": [float(v) for v in arrays["test_loss"]],
        "test_r2_pooled": [float(v) for v in arrays["test_r2_pooled"]],
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / result.epochs,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "settings": dict(settings),
    }
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        state = {name: value.detach().cpu().contiguous() for name, value in result.model.stacked_state().items()}
        metadata = {"d_model": str(d_model), "n_layers": str(settings["n_layers"]), "widths": json.dumps(result.model.widths), "seeds": json.dumps(seeds)}
        save_file(state, str(temp / "model.safetensors"), metadata=metadata)
        with open(temp / "training_curve.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS)
            writer.writeheader()
            for seed, history in zip(seeds, result.history):
                writer.writerows({"seed": seed, **record} for record in history)
        attrs = {"sublayer_names": sublayer_names, **{k: info[k] for k in ("model_name", "condition", "widths", "seeds", "best_epoch")}}
        write_group(temp / "embedding.zarr", arrays, attrs=attrs)
        (temp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_batched(out_dir) -> BatchedAutoencoder:
    """Every seed's trained CAE saved by ``run_cae`` in ``out_dir`` (on the CPU, eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(out_dir) / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    model = BatchedAutoencoder(int(meta["d_model"]), int(meta["n_layers"]), json.loads(meta["seeds"]))
    model.load_stacked(state, state["input_mean"], state["input_scale"])
    return model.eval()


def load_cae(out_dir, seed_index: int = 0) -> CompressingAutoencoder:
    """The trained CAE of seed ``seed_index`` (position in ``cae.seeds``) saved by ``run_cae``
    in ``out_dir``, as a single model (on the CPU, eval mode)."""
    return load_batched(out_dir).seed_model(seed_index)
