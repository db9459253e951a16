"""Compressing autoencoder (CAE) of residual-stream states (paper §2.7, Fig. 3).

Every sublayer state of every sequence is one sample of dimension D. The encoder has k
layers whose output widths shrink geometrically, d_i = round(D * r^i) for i = 0..k-1
with r = (2 / D)^(1 / (k - 1)), so d_0 = D and d_{k-1} = 2 (the bottleneck); the
decoder mirrors it (widths d_{k-2}, ..., d_0, then D). Every layer is
Linear -> LayerNorm -> ReLU except the last encoder layer and the last decoder layer,
which are plain Linear. Training: Adam (lr 1e-3), MSE, at most 100 epochs, early
stopping on the validation loss with patience 10, and the best model is kept. Train,
validation and test sets are split by sequence so that no sequence's states leak
across sets.

Added for reliable training (config ``cae``): a fixed affine input map inside the model
(``input_scaling``, default ``unit``: centre each unit and divide it by its training
std, undone at the output, so the loss is still the MSE in the units of the states);
the gradient is that of the MSE divided by a constant, mean(input_scale^2), so Adam
sees the same objective; optional gradient-norm clipping (``grad_clip``) and linear
learning-rate warm-up (``warmup_epochs``), both off by default. On smollm2-135m a few
massive units (|x| up to ~700, half the variance in one unit) made the global-scale
fit collapse or stall on some seeds; per-unit scaling trained to test MSE 21.4-24.7
(pooled R^2 0.78-0.82) on every seed tried (0-4), and clipping or warm-up did not improve it.

Explained variance per sublayer on the test set (Fig. 3D). The primary curve is the
paper's plain words read literally, with "variance" the variance of all entries of
sublayer s's test block X_s (n sequences x D units, one grand mean):
    EV_s = 1 - var(X_s - Y_s) / var(X_s)            (``ev_block_per_sublayer``)
Two references are kept (grey in Fig. 3D): the R^2 against each unit's own mean in the
sublayer, 1 - ||X_s - Y_s||^2 / ||X_s - mean(X_s)||^2 (``ev_per_sublayer``), which a 2-D
code trained on pooled states cannot beat (it stays near 0), and the same against the
pooled mean of all test states (``ev_per_sublayer_pooled_reference``).

Data (``rsdyn.cae_data``): the split's sequences are read in blocks of the store's sample
chunks, in memory or streamed (``cae.data``), shuffled by block and within block with
seeds, so that a store larger than memory trains with memory bounded by a few blocks and
gives the numbers the in-memory run gives. Same config and thread count give identical
numbers (seeded split, weights and order; ``torch.use_deterministic_algorithms``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsdyn import jobs
from rsdyn.cae_summary import NEGLIGIBLE_RELATIVE_VARIANCE, sublayers_with_variance, summary_fig3  # noqa: F401 - re-exported
from rsdyn.models import resolve_device as resolve_model_device

EVAL_BATCH = 8192
INPUT_SCALINGS = ("global", "unit", "none")
DEFAULT_INPUT_SCALING = "unit"


def check_input_scaling(mode: str) -> None:
    """Raise a clear ValueError unless ``mode`` is one of ``INPUT_SCALINGS``."""
    if mode not in INPUT_SCALINGS:
        raise ValueError(f"cae.input_scaling = {mode!r}; allowed: {', '.join(INPUT_SCALINGS)}.")


def check_training_options(grad_clip: float | None, warmup_epochs: float) -> None:
    """Raise a clear ValueError for a non-positive ``grad_clip`` or a negative ``warmup_epochs``."""
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"cae.grad_clip = {grad_clip}; it must be a positive number or null (no clipping).")
    if warmup_epochs < 0:
        raise ValueError(f"cae.warmup_epochs = {warmup_epochs}; it must be 0 (no warm-up) or positive.")


def layer_widths(d_model: int, n_layers: int = 10) -> list[int]:
    """Output widths of the k encoder layers: round(D * r^i), i = 0..k-1, r = (2/D)^(1/(k-1)).

    The first is D and the last is 2 (the 2-D bottleneck); no width is below 2.
    """
    if d_model <= 2:
        raise ValueError(f"The CAE needs an input dimension above 2 (its bottleneck); got D = {d_model}.")
    if n_layers < 2:
        raise ValueError(f"cae.n_layers = {n_layers}; the encoder needs at least 2 layers.")
    ratio = (2.0 / d_model) ** (1.0 / (n_layers - 1))
    widths = [max(2, round(d_model * ratio**i)) for i in range(n_layers)]
    widths[0], widths[-1] = d_model, 2
    return widths


def _stack(dims: list[int]) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU between consecutive ``dims``; the last layer plain Linear."""
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if index < len(dims) - 2:
            layers += [nn.LayerNorm(d_out), nn.ReLU()]
    return nn.Sequential(*layers)


class CompressingAutoencoder(nn.Module):
    """The paper's CAE: D -> d_0 -> ... -> d_{k-1} = 2 -> d_{k-2} -> ... -> d_0 -> D.

    Inputs and outputs are in the units of the residual stream. A fixed (not trained)
    affine map ``(x - input_mean) / input_scale`` precedes the encoder and its inverse
    follows the decoder; ``input_mean`` and ``input_scale`` (both (D,)) default to 0 and 1
    and are set from the training data by ``set_input_scaling``. The map only changes
    the parametrisation: the reconstruction, and the MSE it is trained on, stay in the
    units of the states.
    """

    def __init__(self, d_model: int, n_layers: int = 10):
        super().__init__()
        self.d_model = d_model
        self.n_layers = n_layers
        self.widths = layer_widths(d_model, n_layers)
        self.encoder = _stack([d_model, *self.widths])
        self.decoder = _stack([*self.widths[::-1], d_model])
        self.register_buffer("input_mean", torch.zeros(d_model))
        self.register_buffer("input_scale", torch.ones(d_model))

    @torch.no_grad()
    def set_input_scaling(self, samples: torch.Tensor, mode: str = DEFAULT_INPUT_SCALING) -> None:
        """Set the input map from ``samples`` (n, D): ``global`` centres each unit and
        divides all units by one scalar, the root mean square deviation over all entries;
        ``unit`` centres each unit and divides it by its own standard deviation (units
        without variance by 1); ``none`` keeps mean 0 and scale 1."""
        from rsdyn.cae_data import Moments

        check_input_scaling(mode)
        moments = Moments()
        moments.add(samples.detach().cpu().double().numpy())
        self.set_input_moments(moments.mean, moments.variance, mode)

    @torch.no_grad()
    def set_input_moments(self, mean: np.ndarray, variance: np.ndarray, mode: str = DEFAULT_INPUT_SCALING) -> None:
        """Set the input map from per-unit ``mean`` and population ``variance`` (D,) of the
        training samples (e.g. from one streaming pass, ``rsdyn.cae_data.unit_moments``);
        see ``set_input_scaling`` for the modes."""
        check_input_scaling(mode)
        if mode == "none":
            self.input_mean.zero_()
            self.input_scale.fill_(1.0)
            return
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        variance = torch.as_tensor(np.asarray(variance, dtype=np.float64))
        scale = torch.sqrt(variance) if mode == "unit" else torch.sqrt(variance.mean()).expand(len(variance))
        self.input_mean.copy_(mean)
        self.input_scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    def loss_normaliser(self) -> torch.Tensor:
        """mean(input_scale^2): the training loss is the MSE divided by it, which keeps the
        MSE objective (a constant factor) while giving gradients of order one, so that
        ``grad_clip`` means the same on every model."""
        return torch.mean(self.input_scale.double() ** 2).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) states -> (..., 2) embedding."""
        return self.encoder((x - self.input_mean) / self.input_scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., 2) embedding -> (..., D) reconstruction, in the units of the states."""
        return self.decoder(z) * self.input_scale + self.input_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_model(d_model: int, n_layers: int, seed: int) -> CompressingAutoencoder:
    """A CAE initialised from ``seed`` without touching the global torch RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CompressingAutoencoder(d_model, n_layers)


def split_by_sequence(
    n_sequences: int, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded split of sequence indices into sorted ``train``, ``val`` and ``test`` arrays.

    Validation and test get round(fraction * n) sequences each, at least one; every
    sequence is in exactly one set.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"cae.val_fraction = {val_fraction} and cae.test_fraction = {test_fraction}; "
            "each must lie in (0, 1) and their sum below 1."
        )
    n_val = max(1, round(val_fraction * n_sequences))
    n_test = max(1, round(test_fraction * n_sequences))
    if n_sequences - n_val - n_test < 1:
        raise ValueError(
            f"The CAE split needs at least one training sequence; {n_sequences} sequences "
            f"leave none after {n_val} for validation and {n_test} for test."
        )
    order = np.random.default_rng(seed).permutation(n_sequences)
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def resolve_device(device: str) -> torch.device:
    """The torch device of ``cae.device`` (``auto`` -> CUDA when visible)."""
    return torch.device(resolve_model_device(device, "cae.device"))


@dataclass
class TrainResult:
    """Outcome of ``train_cae``: the best model (loaded), the per-epoch history and why it stopped."""

    model: CompressingAutoencoder
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def best_val_loss(self) -> float:
        return self.history[self.best_epoch - 1]["val_loss"]


class TensorSource:
    """The samples of an in-memory ``(n, D)`` tensor as batches: with ``shuffle``, epoch
    after epoch the next ``torch.randperm`` of one generator seeded once with ``seed``
    (call ``batches`` once per epoch, in order); else in row order."""

    def __init__(self, data: torch.Tensor, seed: int = 0, shuffle: bool = False):
        self.data = data
        self.n_samples = len(data)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n_samples

    def batches(self, epoch: int, batch_size: int):  # noqa: ARG002 - same interface as BlockSource
        if not self.shuffle:
            for start in range(0, self.n_samples, batch_size):
                yield self.data[start : start + batch_size]
            return
        order = torch.randperm(self.n_samples, generator=self.generator).to(self.data.device)
        for start in range(0, self.n_samples, batch_size):
            yield self.data[order[start : start + batch_size]]


def as_source(data, seed: int = 0, shuffle: bool = False):
    """A tensor as a ``TensorSource``; a ``rsdyn.cae_data.BlockSource`` as it is."""
    return TensorSource(data, seed, shuffle) if isinstance(data, torch.Tensor) else data


@torch.no_grad()
def mse(model: nn.Module, data, batch: int = EVAL_BATCH) -> float:
    """Mean squared error of the reconstruction over all entries of ``data``: an (n, D)
    tensor or a source of samples (``BlockSource``), taken in order."""
    model.eval()
    source = as_source(data)
    total, count = 0.0, 0
    for chunk in source.batches(0, batch):
        total += torch.sum((model(chunk) - chunk) ** 2, dtype=torch.float64).item()
        count += chunk.numel()
    return total / count


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of Adam step ``step`` (0-based): (step + 1) / warmup_steps
    during the linear warm-up, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def train_cae(
    model: CompressingAutoencoder,
    train: torch.Tensor,
    val: torch.Tensor,
    *,
    lr: float = 1e-3,
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 256,
    grad_clip: float | None = None,
    warmup_epochs: float = 0,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Adam on the MSE of ``train`` with early stopping on the MSE of ``val``; each is an
    (n, D) tensor or a source of samples (``rsdyn.cae_data.BlockSource``, which gives
    its own seeded block order).

    Stops after ``patience`` epochs without a lower validation loss (or at
    ``max_epochs``) and returns the model with the weights of its best epoch. For a
    tensor, batches are drawn from a permutation seeded by ``seed`` (on the CPU, so the
    order is the same on every device). The gradient is that of the MSE divided by
    ``model.loss_normaliser()`` (a constant); with ``grad_clip`` its total norm is
    clipped to at most ``grad_clip`` before each step (None: no clipping). The learning
    rate rises linearly from lr / w to ``lr`` over the first w = ceil(warmup_epochs x
    steps per epoch) steps, then stays at ``lr``. History losses are MSEs in squared
    input units; ``grad_norm_max`` is the largest gradient norm of the epoch, before
    clipping (of the normalised loss).
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError("train_cae needs at least one training and one validation sample.")
    check_training_options(grad_clip, warmup_epochs)
    train, val = as_source(train, seed, shuffle=True), as_source(val)
    device = model.input_mean.device
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    warmup_steps = math.ceil(warmup_epochs * steps_per_epoch)
    normaliser = model.loss_normaliser().to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    result = TrainResult(model=model)
    best_state: dict[str, torch.Tensor] | None = None
    best_loss = math.inf
    step = 0
    start = time.perf_counter()
    bar = jobs.progress(range(1, max_epochs + 1), desc="cae epochs", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        running = torch.zeros((), dtype=torch.float64, device=device)
        norms = []
        for batch in train.batches(epoch, batch_size):
            for group in optimiser.param_groups:
                group["lr"] = lr * warmup_factor(step, warmup_steps)
            loss = torch.nn.functional.mse_loss(model(batch), batch)
            optimiser.zero_grad(set_to_none=True)
            (loss / normaliser).backward()
            norms.append(torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip is not None else math.inf))
            optimiser.step()
            step += 1
            running += loss.detach().double() * len(batch)
        val_loss = mse(model, val)
        record = {
            "epoch": epoch,
            "train_loss": running.item() / len(train),
            "val_loss": val_loss,
            "grad_norm_max": torch.stack(norms).max().item(),
            "lr": optimiser.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        result.history.append(record)
        bar.set_postfix(train=f"{record['train_loss']:.4g}", val=f"{val_loss:.4g}")
        if val_loss < best_loss:
            best_loss, result.best_epoch = val_loss, epoch
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        elif epoch - result.best_epoch >= patience:
            result.stopped_early = True
            break
    bar.close()
    if best_state is None:
        raise FloatingPointError("CAE training diverged: the validation MSE was not finite in any epoch; lower cae.lr or set cae.grad_clip.")
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def encode_and_reconstruct(model: CompressingAutoencoder, states: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Embedding (..., 2) and reconstruction (..., D) of ``states`` (..., D), as float32 NumPy."""
    model.eval()
    flat = states.reshape(-1, states.shape[-1])
    codes, recons = [], []
    for start in range(0, len(flat), EVAL_BATCH):
        code = model.encode(flat[start : start + EVAL_BATCH])
        codes.append(code.cpu())
        recons.append(model.decode(code).cpu())
    lead = tuple(states.shape[:-1])
    return (
        torch.cat(codes).reshape(*lead, -1).numpy(),
        torch.cat(recons).reshape(*lead, -1).numpy(),
    )


def explained_variance_per_sublayer(states: np.ndarray, reconstruction: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """R^2 of each sublayer, for (n, S, D) inputs -> (S,).

    1 - ||X_s - Y_s||^2 / ||X_s - c_s||^2 with c_s the sublayer's own mean (default, a
    proper R^2), or a fixed (D,) ``reference`` such as the pooled mean of all states
    (then the denominator also holds the sublayer's offset from it). NaN where the
    denominator is zero.
    """
    states = np.asarray(states, dtype=np.float64)
    residual = np.sum((states - reconstruction) ** 2, axis=(0, 2))
    centre = states.mean(axis=0, keepdims=True) if reference is None else np.asarray(reference, dtype=np.float64)
    spread = np.sum((states - centre) ** 2, axis=(0, 2))
    return 1.0 - residual / np.where(spread > 0, spread, np.nan)


def step_distances(embedding: np.ndarray) -> np.ndarray:
    """Euclidean distance between successive sublayers of each trajectory: (n, S, 2) -> (n, S-1)."""
    return np.linalg.norm(np.diff(np.asarray(embedding, dtype=np.float64), axis=1), axis=-1)


def check_cae_settings(settings: Mapping[str, Any], n_sequences: int, d_model: int) -> None:
    """Raise one clear ValueError when the cae settings cannot run on this capture."""
    from rsdyn.cae_data import DATA_MODES

    layer_widths(d_model, settings["n_layers"])
    check_input_scaling(settings.get("input_scaling", DEFAULT_INPUT_SCALING))
    check_training_options(settings.get("grad_clip"), settings.get("warmup_epochs", 0))
    split_by_sequence(n_sequences, settings["val_fraction"], settings["test_fraction"], settings["seed"])
    resolve_device(settings.get("device", "auto"))
    if settings.get("data", "auto") not in DATA_MODES:
        raise ValueError(f"cae.data = {settings['data']!r}; allowed: {', '.join(DATA_MODES)}.")


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(True)`` (and cuBLAS's
    deterministic workspace), restoring the previous mode afterwards."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@torch.no_grad()
def evaluate_test(model: CompressingAutoencoder, source) -> tuple[np.ndarray, Any]:
    """Stream the test blocks of ``source`` (a ``BlockSource``, store order) through the
    model: the embedding float32 (n_test, 2L, 2) and the ``HeldOutStatistics`` of the
    reconstruction; one block of reconstructions is held at a time."""
    from rsdyn.cae_data import HeldOutStatistics

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
    ``training.json``. The data are read block by block (``rsdyn.cae_data``): in memory
    or streamed as ``cae.data`` says, with the same numbers either way.
    """
    from safetensors.torch import save_file

    from rsdyn.cae_data import DEFAULT_BLOCK_MB, data_mode, load_sources, unit_moments
    from rsdyn.store import atomic_path, ignoring_snakemake_marker, open_group, write_group

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
