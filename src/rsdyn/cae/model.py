"""Compressing autoencoder (CAE) of residual-stream states (paper §2.7, Fig. 3): the
network and its training.

Every sublayer state of every sequence is one sample of dimension D. The encoder has k
layers whose output widths shrink geometrically, d_i = round(D * r^i) for i = 0..k-1
with r = (2 / D)^(1 / (k - 1)), so d_0 = D and d_{k-1} = 2 (the bottleneck); the
decoder mirrors it (widths d_{k-2}, ..., d_0, then D). Every layer is
Linear -> LayerNorm -> ReLU except the last encoder layer and the last decoder layer,
which are plain Linear. Training: Adam (lr 1e-3), MSE, at most 100 epochs, early
stopping on the validation loss with patience 10, and the best model is kept. Train,
validation and test sets are split by sequence (:func:`rsdyn.cae.settings.split_by_sequence`)
so that no sequence's states leak across sets.

Added for reliable training (config ``cae``): a fixed affine input map inside the model
(``input_scaling``, default ``unit``: centre each unit and divide it by its training
std, undone at the output, so the loss is still the MSE in the units of the states);
the gradient is that of the MSE divided by a constant, mean(input_scale^2), so Adam
sees the same objective; optional gradient-norm clipping (``grad_clip``) and linear
learning-rate warm-up (``warmup_epochs``), both off by default. On smollm2-135m a few
massive units (|x| up to ~700, half the variance in one unit) made the global-scale
fit collapse or stall on some seeds; per-unit scaling trained to test MSE 21.4-24.7
(pooled R^2 0.78-0.82) on every seed tried (0-4), and clipping or warm-up did not improve it.

Data (:mod:`rsdyn.cae.data`): the split's sequences are read in blocks of the store's
sample chunks, in memory or streamed (``cae.data``), shuffled by block and within block
with seeds, so that a store larger than memory trains with memory bounded by a few
blocks and gives the numbers the in-memory run gives."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rsdyn.cae.settings import (
    DEFAULT_INPUT_SCALING,
    check_input_scaling,
    check_training_options,
)
from rsdyn.core import jobs
from rsdyn.models.weights import resolve_device as resolve_model_device

EVAL_BATCH = 8192


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
        from rsdyn.cae.data import Moments

        check_input_scaling(mode)
        moments = Moments()
        moments.add(samples.detach().cpu().double().numpy())
        self.set_input_moments(moments.mean, moments.variance, mode)

    @torch.no_grad()
    def set_input_moments(self, mean: np.ndarray, variance: np.ndarray, mode: str = DEFAULT_INPUT_SCALING) -> None:
        """Set the input map from per-unit ``mean`` and population ``variance`` (D,) of the
        training samples (e.g. from one streaming pass, ``rsdyn.cae.data.unit_moments``);
        see ``set_input_scaling`` for the modes."""
        centre, scale = input_map(mean, variance, mode)
        self.input_mean.copy_(centre)
        self.input_scale.copy_(scale)

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


def input_map(mean: np.ndarray, variance: np.ndarray, mode: str = DEFAULT_INPUT_SCALING) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed input map ``(x - centre) / scale`` of ``cae.input_scaling`` from per-unit
    ``mean`` and population ``variance`` (D,) of the training samples: ``unit`` centres
    each unit and divides it by its std, ``global`` divides all units by the root mean
    variance, ``none`` is the identity; a scale of 0 becomes 1. float64 (D,) each."""
    check_input_scaling(mode)
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
    if mode == "none":
        return torch.zeros_like(mean), torch.ones_like(mean)
    variance = torch.as_tensor(np.asarray(variance, dtype=np.float64))
    scale = torch.sqrt(variance) if mode == "unit" else torch.sqrt(variance.mean()).expand(len(variance))
    return mean, torch.where(scale > 0, scale, torch.ones_like(scale))


def build_model(d_model: int, n_layers: int, seed: int) -> CompressingAutoencoder:
    """A CAE initialised from ``seed`` without touching the global torch RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CompressingAutoencoder(d_model, n_layers)


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
    (call ``batches`` once per epoch, in order), or with ``seeds`` one generator per
    seed, each seeded once with its seed; else in row order."""

    def __init__(self, data: torch.Tensor, seed: int = 0, shuffle: bool = False):
        self.data = data
        self.n_samples = len(data)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.generators: dict[int, torch.Generator] = {}

    def __len__(self) -> int:
        return self.n_samples

    def batches(self, epoch: int, batch_size: int, seeds=None):  # noqa: ARG002 - same interface as BlockSource
        """(B, D) batches; with ``seeds`` and ``shuffle``, (S, B, D): seed k's batches from
        its own generator's next permutation."""
        if not self.shuffle:
            for start in range(0, self.n_samples, batch_size):
                yield self.data[start : start + batch_size]
            return
        if seeds is None:
            order = torch.randperm(self.n_samples, generator=self.generator).to(self.data.device)
        else:
            generators = [self.generators.setdefault(int(s), torch.Generator().manual_seed(int(s))) for s in seeds]
            order = torch.stack([torch.randperm(self.n_samples, generator=g) for g in generators]).to(self.data.device)
        for start in range(0, self.n_samples, batch_size):
            yield self.data[order[..., start : start + batch_size]]


def as_source(data, seed: int = 0, shuffle: bool = False):
    """A tensor as a ``TensorSource``; a ``rsdyn.cae.data.BlockSource`` as it is."""
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
    (n, D) tensor or a source of samples (``rsdyn.cae.data.BlockSource``, which gives
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


