"""CAE stage entry (rule ``cae``): split the sequences, train the compressing autoencoder
on the run's store (:mod:`rsdyn.cae.model`, data in memory or streamed by
:mod:`rsdyn.cae.data`), and write ``cae/``: the weights, the training curve, and
``embedding.zarr`` with the test embedding and the explained-variance and step-distance
curves of Fig. 3 (:mod:`rsdyn.cae.metrics`). Same config and thread count give identical
numbers (seeded split, weights and order; ``torch.use_deterministic_algorithms``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsdyn.cae.metrics import step_distances
from rsdyn.cae.model import (
    CompressingAutoencoder,
    build_model,
    deterministic_torch,
    encode_and_reconstruct,
    layer_widths,
    resolve_device,
    train_cae,
)
from rsdyn.cae.settings import (
    DEFAULT_INPUT_SCALING,
    check_input_scaling,
    check_training_options,
    split_by_sequence,
)


def check_cae_settings(settings: Mapping[str, Any], n_sequences: int, d_model: int) -> None:
    """Raise one clear ValueError when the cae settings cannot run on this capture."""
    from rsdyn.cae.settings import DATA_MODES

    layer_widths(d_model, settings["n_layers"])
    check_input_scaling(settings.get("input_scaling", DEFAULT_INPUT_SCALING))
    check_training_options(settings.get("grad_clip"), settings.get("warmup_epochs", 0))
    split_by_sequence(n_sequences, settings["val_fraction"], settings["test_fraction"], settings["seed"])
    resolve_device(settings.get("device", "auto"))
    if settings.get("data", "auto") not in DATA_MODES:
        raise ValueError(f"cae.data = {settings['data']!r}; allowed: {', '.join(DATA_MODES)}.")


@torch.no_grad()
def evaluate_test(model: CompressingAutoencoder, source) -> tuple[np.ndarray, Any]:
    """Stream the test blocks of ``source`` (a ``BlockSource``, store order) through the
    model: the embedding float32 (n_test, 2L, 2) and the ``HeldOutStatistics`` of the
    reconstruction; one block of reconstructions is held at a time."""
    from rsdyn.cae.data import HeldOutStatistics

    stats, codes = HeldOutStatistics(), []
    for _, states in source.blocks():
        code, reconstruction = encode_and_reconstruct(model, states)
        codes.append(code)
        stats.add(states.cpu().numpy(), reconstruction)
    return np.concatenate(codes), stats


def run_cae(store_path, out_dir, settings: Mapping[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Train the CAE on the capture at ``store_path`` and write ``out_dir`` atomically.

    ``settings`` is the run's ``cae`` section. ``out_dir`` receives ``model.safetensors``
    (best weights), ``training_curve.csv`` (epoch, train_loss, val_loss, grad_norm_max, lr, seconds),
    ``embedding.zarr`` (``embedding`` (n_test, 2L, 2) of the test sequences,
    ``test_sequences`` (n_test,) their rows in the capture, ``ev_block_per_sublayer``
    (2L,) (Fig. 3D's primary curve: 1 - var(X_s - Y_s) / var(X_s) over all entries of the
    sublayer's test block), ``ev_per_sublayer`` (2L,) (R^2 against each unit's own test
    mean in the sublayer), ``ev_per_sublayer_pooled_reference`` (2L,) (against the
    pooled test mean of all sublayers), ``step_distance`` and ``step_distance_sem``
    (2L-1,) (mean and s.e.m. over test sequences of the 2-D distance between successive
    sublayers), ``mean_trajectory`` (2L, 2), ``test_mse_per_sublayer`` (2L,) (squared
    input units), ``test_variance_per_sublayer`` (2L,) (variance across test sequences,
    averaged over units), ``test_sequence_stats`` (n_test, 2L, 4) float64 (per test
    sequence and sublayer, over units: mean and population variance of X and of X - Y;
    the bootstrap of the summary resamples them) and ``test_r2_pooled`` () (R^2
    over all test states about their pooled mean)) and ``training.json`` (widths, split
    sizes, epochs, timing, test MSE, test_r2_pooled, data mode). Returns the contents of
    ``training.json``. The data are read block by block (``rsdyn.cae.data``): in memory
    or streamed as ``cae.data`` says, with the same numbers either way.
    """
    from safetensors.torch import save_file

    from rsdyn.cae.data import data_mode, load_sources, unit_moments
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

    split = split_by_sequence(n_sequences, settings["val_fraction"], settings["test_fraction"], settings["seed"])
    mode = data_mode(settings.get("data", "auto"), n_sequences * n_sublayers * d_model * 4, settings.get("memory_gb", 2.0))
    input_scaling = settings.get("input_scaling", DEFAULT_INPUT_SCALING)
    with deterministic_torch():
        sources = load_sources(store_path, condition, split, seed=settings["seed"], mode=mode,
                               workers=settings.get("loader_workers", 0), device=device,
                               block_mb=settings.get("block_mb", DEFAULT_BLOCK_MB))
        model = build_model(d_model, settings["n_layers"], settings["seed"]).to(device)
        moments = unit_moments(sources["train"])
        model.set_input_moments(moments.mean, moments.variance, input_scaling)
        result = train_cae(
            model,
            sources["train"],
            sources["val"],
            lr=settings["lr"],
            max_epochs=settings["max_epochs"],
            patience=settings["patience"],
            batch_size=settings["batch_size"],
            grad_clip=settings.get("grad_clip"),
            warmup_epochs=settings.get("warmup_epochs", 0),
            seed=settings["seed"],
        )
        embedding, test_stats = evaluate_test(model, sources["test"])
    metrics = test_stats.results()
    distances = step_distances(embedding)
    n_test = len(split["test"])
    sublayer_names = list(group.attrs.get("sublayer_names", [f"S{s}" for s in range(n_sublayers)]))
    info = {
        "model_name": group.attrs.get("model_name"),
        "condition": condition,
        "d_model": d_model,
        "n_layers": settings["n_layers"],
        "widths": model.widths,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_sequences": {name: len(rows) for name, rows in split.items()},
        "n_samples": {name: len(rows) * n_sublayers for name, rows in split.items()},
        "n_blocks": {name: len(source.dataset.blocks) for name, source in sources.items()},
        "data": mode,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "input_scaling": input_scaling,
        "input_scale_rms": float(model.loss_normaliser().sqrt()),
        "best_val_loss": result.best_val_loss,
        "test_loss": metrics["test_loss"],
        "test_r2_pooled": metrics["test_r2_pooled"],
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / len(result.history),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "settings": dict(settings),
    }
    arrays = {
        "embedding": embedding.astype(np.float32),
        "test_sequences": split["test"].astype(np.int32),
        "ev_block_per_sublayer": metrics["ev_block_per_sublayer"].astype(np.float32),
        "ev_per_sublayer": metrics["ev_per_sublayer"].astype(np.float32),
        "ev_per_sublayer_pooled_reference": metrics["ev_per_sublayer_pooled_reference"].astype(np.float32),
        "step_distance": distances.mean(axis=0).astype(np.float32),
        "step_distance_sem": (distances.std(axis=0, ddof=1) / np.sqrt(n_test) if n_test > 1 else np.zeros(n_sublayers - 1)).astype(np.float32),
        "mean_trajectory": embedding.mean(axis=0).astype(np.float32),
        "test_mse_per_sublayer": metrics["test_mse_per_sublayer"].astype(np.float32),
        "test_variance_per_sublayer": metrics["test_variance_per_sublayer"].astype(np.float32),
        "test_sequence_stats": test_stats.sequence_stats(),
        "test_r2_pooled": np.asarray(metrics["test_r2_pooled"], dtype=np.float64),
    }
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        state = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
        save_file(state, str(temp / "model.safetensors"), metadata={"d_model": str(d_model), "n_layers": str(settings["n_layers"]), "widths": json.dumps(model.widths)})
        with open(temp / "training_curve.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "train_loss", "val_loss", "grad_norm_max", "lr", "seconds"])
            writer.writeheader()
            writer.writerows(result.history)
        attrs = {"sublayer_names": sublayer_names, **{k: info[k] for k in ("model_name", "condition", "widths", "best_epoch")}}
        write_group(temp / "embedding.zarr", arrays, attrs=attrs)
        (temp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_cae(out_dir) -> CompressingAutoencoder:
    """The trained CAE saved by ``run_cae`` in ``out_dir`` (on the CPU, eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(out_dir) / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    model = CompressingAutoencoder(int(meta["d_model"]), int(meta["n_layers"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
