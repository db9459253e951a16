"""Several training seeds of the compressing autoencoder trained at once, as one batched
model (``cae.seeds``).

Seed k's network is the one ``rsdyn.cae.model.build_model(d_model, n_layers, seeds[k])``
builds; every layer keeps the weights of all seeds stacked along a leading seed axis
(a Linear's weight is (S, d_out, d_in), as nn.Linear's with a seed axis in front) and
applies them with ``torch.baddbmm``; each LayerNorm normalises without affine
parameters and then applies each seed's own scale and shift. The input map
(``input_mean``, ``input_scale``) comes from the training data and is the same for
every seed. Seeds never mix: the loss is the sum of the seeds' losses, so each seed's
gradient is the gradient of its own loss; gradient clipping and early stopping are per
seed; Adam is elementwise, so its stacked state is each seed's own state side by side.

Data order (``train_seeds``): every seed sees the same blocks of the store in the same
seeded order (``cae.seed``) and its own order of the samples within each block, drawn
from its own training seed (``rsdyn.cae.data.within_block_order``, or a
``torch.randperm`` per seed for an in-memory tensor). The seed that equals ``cae.seed``
therefore trains exactly as the single-seed CAE did, and the spread over seeds holds
the variance of the initialisation and of the order of the samples.

A seed that stops early (no lower validation loss for ``patience`` epochs) keeps the
weights of its best epoch and leaves the batch: later epochs compute only the seeds
still training. Training ends when every seed has stopped or at ``max_epochs``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rsdyn.cae.model import (
    EVAL_BATCH,
    CompressingAutoencoder,
    as_source,
    build_model,
    input_map,
    layer_widths,
    warmup_factor,
)
from rsdyn.cae.settings import check_training_options
from rsdyn.core import jobs

LOG = logging.getLogger("rsdyn.cae")

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, as in the single-seed model


def layers(n_layers: int) -> list[tuple[str, str, str | None]]:
    """``(side, linear, norm)`` of every Linear of the CAE in order (encoder, then decoder),
    named as in ``CompressingAutoencoder.state_dict()``: the j-th Linear of a side sits at
    position 3j of its nn.Sequential and its LayerNorm (all but the last; None) at 3j + 1."""
    return [(side, f"{side}.{3 * j}", f"{side}.{3 * j + 1}" if j < n_layers - 1 else None)
            for side in ("encoder", "decoder") for j in range(n_layers)]


def parameter_names(n_layers: int) -> list[str]:
    """Every parameter name of a ``CompressingAutoencoder`` of ``n_layers`` layers per side."""
    return [f"{module}.{kind}" for _, linear, norm in layers(n_layers) for module in (linear, norm) if module
            for kind in ("weight", "bias")]


def _param_key(name: str) -> str:
    return name.replace(".", "__")


class BatchedAutoencoder(nn.Module):
    """S compressing autoencoders of the same shape, one per training seed, evaluated together.

    ``forward``, ``encode`` and ``decode`` take states (B, D) shared by all seeds or
    (S, B, D) one batch per seed and return (S, B, D), (S, B, 2) and (S, B, D).
    ``stacked_state()`` holds every parameter under its ``CompressingAutoencoder``
    name with a leading seed axis, plus the shared ``input_mean`` and ``input_scale``.
    """

    def __init__(self, d_model: int, n_layers: int, seeds: Sequence[int]):
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.widths = layer_widths(d_model, n_layers)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("cae.seeds is empty; give at least one training seed.")
        self.register_buffer("input_mean", torch.zeros(d_model))
        self.register_buffer("input_scale", torch.ones(d_model))
        self.names: list[str] = []  # parameter names, CompressingAutoencoder style

    @classmethod
    def from_models(cls, models: Sequence[CompressingAutoencoder], seeds: Sequence[int]) -> BatchedAutoencoder:
        """The batched model holding ``models`` (same shape) as seeds ``seeds``, in that order;
        the input map is the first model's."""
        first = models[0]
        batched = cls(first.d_model, first.n_layers, seeds)
        states = [model.state_dict() for model in models]
        stacked = {name: torch.stack([state[name] for state in states]) for name in states[0] if name not in ("input_mean", "input_scale")}
        batched.load_stacked(stacked, first.input_mean, first.input_scale)
        return batched

    @classmethod
    def from_seeds(cls, d_model: int, n_layers: int, seeds: Sequence[int]) -> BatchedAutoencoder:
        """Seed k initialised exactly as ``build_model(d_model, n_layers, seeds[k])``."""
        return cls.from_models([build_model(d_model, n_layers, seed) for seed in seeds], seeds)

    def load_stacked(self, stacked: dict[str, torch.Tensor], input_mean: torch.Tensor, input_scale: torch.Tensor) -> None:
        """Set every parameter from ``stacked`` (name -> (S, ...) tensor) and the input map."""
        expected = parameter_names(self.n_layers)
        missing = sorted(set(expected) - set(stacked))
        if missing:
            raise ValueError(f"The stacked CAE weights lack {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}.")
        for name in list(self.names):
            delattr(self, _param_key(name))
        self.names = expected
        for name in self.names:
            value = stacked[name]
            if value.shape[0] != len(self.seeds):
                raise ValueError(f"Stacked CAE weight {name} has {value.shape[0]} seeds; expected {len(self.seeds)}.")
            self.register_parameter(_param_key(name), nn.Parameter(value.detach().clone().to(self.input_mean.device)))
        with torch.no_grad():
            self.input_mean.copy_(input_mean)
            self.input_scale.copy_(input_scale)

    def param(self, name: str) -> nn.Parameter:
        return getattr(self, _param_key(name))

    def stacked_state(self) -> dict[str, torch.Tensor]:
        """Every parameter (S, ...) under its single-model name, and the shared input map."""
        state = {name: self.param(name).detach() for name in self.names}
        state.update(input_mean=self.input_mean.detach(), input_scale=self.input_scale.detach())
        return state

    def seed_model(self, index: int) -> CompressingAutoencoder:
        """Seed ``index`` (position in ``seeds``) as a single ``CompressingAutoencoder`` on the CPU."""
        model = CompressingAutoencoder(self.d_model, self.n_layers)
        state = {name: value[index].cpu() for name, value in self.stacked_state().items() if name not in ("input_mean", "input_scale")}
        state.update(input_mean=self.input_mean.cpu(), input_scale=self.input_scale.cpu())
        model.load_state_dict(state)
        return model.eval()

    @torch.no_grad()
    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the seeds at positions ``indices`` (in that order)."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.input_mean.device)
        stacked = {name: self.param(name).index_select(0, index) for name in self.names}
        self.seeds = [self.seeds[i] for i in indices]
        self.load_stacked(stacked, self.input_mean.clone(), self.input_scale.clone())

    @torch.no_grad()
    def set_input_moments(self, mean: np.ndarray, variance: np.ndarray, mode: str) -> None:
        """The input map shared by every seed (``rsdyn.cae.model.input_map``)."""
        centre, scale = input_map(mean, variance, mode)
        self.input_mean.copy_(centre)
        self.input_scale.copy_(scale)

    def loss_normaliser(self) -> torch.Tensor:
        """mean(input_scale^2), as ``CompressingAutoencoder.loss_normaliser``."""
        return torch.mean(self.input_scale.double() ** 2).float()

    def _side(self, side: str, h: torch.Tensor) -> torch.Tensor:
        for which, linear, norm in layers(self.n_layers):
            if which != side:
                continue
            weight, bias = self.param(f"{linear}.weight"), self.param(f"{linear}.bias")
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if norm:
                gamma, beta = self.param(f"{norm}.weight"), self.param(f"{norm}.bias")
                h = torch.nn.functional.layer_norm(h, (h.shape[-1],), eps=LAYER_NORM_EPS)
                h = torch.relu(torch.addcmul(beta.unsqueeze(1), h, gamma.unsqueeze(1)))
        return h

    def _per_seed(self, x: torch.Tensor) -> torch.Tensor:
        n_seeds = len(self.seeds)
        if x.dim() == 2:
            return x.unsqueeze(0).expand(n_seeds, *x.shape)
        if x.shape[0] != n_seeds:
            raise ValueError(f"A batch of {x.shape[0]} seeds for a CAE of {n_seeds} seeds.")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (S, B, D) states -> (S, B, 2) embedding."""
        return self._side("encoder", self._per_seed((x - self.input_mean) / self.input_scale))  # a shared batch is scaled once

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(S, B, 2) embedding -> (S, B, D) reconstruction, in the units of the states."""
        return self._side("decoder", z) * self.input_scale + self.input_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def clip_per_seed(parameters: Sequence[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Per-seed total gradient norm of stacked ``parameters`` (S, ...), as
    ``torch.nn.utils.clip_grad_norm_`` computes it for one seed (each parameter's 2-norm,
    then the 2-norm of those); with ``max_norm``, each seed's gradients are scaled by
    min(1, max_norm / (norm + 1e-6)). Returns the norms before clipping, (S,)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    if max_norm is not None:
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))
    return total


@torch.no_grad()
def mse_per_seed(model: BatchedAutoencoder, data, batch: int = EVAL_BATCH) -> np.ndarray:
    """Mean squared error of each seed's reconstruction over all entries of ``data`` (an
    (n, D) tensor or a source of samples, taken in order): float64 (S,)."""
    model.eval()
    total = torch.zeros(len(model.seeds), dtype=torch.float64, device=model.input_mean.device)
    count = 0
    for chunk in as_source(data).batches(0, batch):
        total += torch.sum((model(chunk) - chunk) ** 2, dim=(1, 2), dtype=torch.float64)
        count += chunk.numel()
    return total.cpu().numpy() / count


@dataclass
class SeedsResult:
    """Outcome of ``train_seeds``: the model holding every seed's best weights (in the
    order of ``seeds``), and per seed its history, best epoch and whether it stopped early."""

    model: BatchedAutoencoder
    seeds: list[int]
    history: list[list[dict[str, float]]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    stopped_early: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    epochs: int = 0

    @property
    def best_val_loss(self) -> list[float]:
        return [history[best - 1]["val_loss"] for history, best in zip(self.history, self.best_epoch)]


def _restack_optimiser(old: torch.optim.Adam, model: BatchedAutoencoder, old_names: list[str], keep: list[int], lr: float) -> torch.optim.Adam:
    """A new Adam over the model's (shrunk) parameters carrying the kept seeds' moments and step."""
    new = torch.optim.Adam([model.param(name) for name in model.names], lr=lr)
    index = torch.as_tensor(keep, dtype=torch.long, device=model.input_mean.device)
    old_params = dict(zip(old_names, old.param_groups[0]["params"]))
    for name in model.names:
        state = old.state.get(old_params[name])
        if state:
            new.state[model.param(name)] = {
                "step": state["step"].clone(),
                "exp_avg": state["exp_avg"].index_select(0, index).clone(),
                "exp_avg_sq": state["exp_avg_sq"].index_select(0, index).clone(),
            }
    return new


def train_seeds(
    model: BatchedAutoencoder,
    train,
    val,
    *,
    lr: float = 1e-3,
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 256,
    grad_clip: float | None = None,
    warmup_epochs: float = 0,
    progress: bool = True,
) -> SeedsResult:
    """Adam on each seed's MSE of ``train`` with early stopping per seed on its MSE of ``val``.

    ``train`` is an (n, D) tensor (seed k's batches from a ``torch.randperm`` of a
    generator seeded with ``model.seeds[k]``) or a ``BlockSource`` (the blocks in the
    source's seeded order, the samples of a block in seed k's order); ``val`` a tensor
    or a source taken in order. Per seed exactly what ``rsdyn.cae.model.train_cae`` does
    for one (normalised loss, clipping, warm-up, patience, best epoch kept), except that
    a stopped seed leaves the batch. The epoch bar's time estimate is the mean epoch
    time so far; a seed's early stop is reported at the job's terminal and in the log.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError("train_seeds needs at least one training and one validation sample.")
    check_training_options(grad_clip, warmup_epochs)
    seeds = list(model.seeds)
    n_seeds = len(seeds)
    train, val = as_source(train, seeds[0], shuffle=True), as_source(val)
    optimiser = torch.optim.Adam([model.param(name) for name in model.names], lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    warmup_steps = math.ceil(warmup_epochs * steps_per_epoch)
    device = model.input_mean.device
    normaliser = model.loss_normaliser().to(device)
    active = list(range(n_seeds))  # positions in ``seeds`` of the seeds still training
    best = {name: value.detach().clone() for name, value in model.stacked_state().items()}
    best_loss = [math.inf] * n_seeds
    result = SeedsResult(model=model, seeds=seeds, history=[[] for _ in seeds], best_epoch=[0] * n_seeds, stopped_early=[False] * n_seeds)
    step = 0
    start = time.perf_counter()
    bar = jobs.progress(total=max_epochs, desc=f"cae epochs ({n_seeds} seed{'s' * (n_seeds > 1)})", unit="epoch",
                        smoothing=0, disable=not progress)
    for epoch in range(1, max_epochs + 1):
        model.train()
        running = torch.zeros(len(active), dtype=torch.float64, device=device)
        norm_max = torch.zeros(len(active), device=device)
        for batch in train.batches(epoch, batch_size, [seeds[i] for i in active]):
            for group in optimiser.param_groups:
                group["lr"] = lr * warmup_factor(step, warmup_steps)
            per_seed = torch.mean((model(batch) - batch) ** 2, dim=(1, 2))
            optimiser.zero_grad(set_to_none=True)
            (per_seed.sum() / normaliser).backward()
            norm_max = torch.maximum(norm_max, clip_per_seed(optimiser.param_groups[0]["params"], grad_clip))
            optimiser.step()
            step += 1
            running += per_seed.detach().double() * batch.shape[1]
        val_loss = mse_per_seed(model, val)
        train_loss, norms = (running / len(train)).cpu().numpy(), norm_max.cpu().numpy()
        seconds = time.perf_counter() - start
        stopping = []
        for position, index in enumerate(active):
            record = {"epoch": epoch, "train_loss": float(train_loss[position]), "val_loss": float(val_loss[position]),
                      "grad_norm_max": float(norms[position]), "lr": optimiser.param_groups[0]["lr"], "seconds": seconds}
            result.history[index].append(record)
            if val_loss[position] < best_loss[index]:
                best_loss[index], result.best_epoch[index] = float(val_loss[position]), epoch
                for name in model.names:
                    best[name][index] = model.param(name).detach()[position]
            elif epoch - result.best_epoch[index] >= patience:
                result.stopped_early[index] = True
                stopping.append(index)
        result.epochs = epoch
        bar.set_postfix(seeds=len(active), val=f"{float(np.min(val_loss)):.4g}", refresh=False)
        bar.update(1)
        if stopping:
            kept = [position for position, index in enumerate(active) if index not in stopping]
            active = [active[position] for position in kept]
            for index in stopping:
                _report_stop(seeds[index], epoch, result.best_epoch[index], best_loss[index], len(active))
            if not active:
                break
            old_names = list(model.names)
            model.keep(kept)
            optimiser = _restack_optimiser(optimiser, model, old_names, kept, lr)
    bar.close()
    diverged = [seeds[i] for i in range(n_seeds) if result.best_epoch[i] == 0]
    if diverged:
        raise FloatingPointError(f"CAE training diverged for seed(s) {diverged}: the validation MSE was not finite in any epoch; "
                                 "lower cae.lr or set cae.grad_clip.")
    final = BatchedAutoencoder(model.d_model, model.n_layers, seeds).to(device)
    final.load_stacked({name: best[name] for name in model.names}, best["input_mean"], best["input_scale"])
    result.model = final.eval()
    result.seconds = time.perf_counter() - start
    return result


def _report_stop(seed: int, epoch: int, best_epoch: int, best_loss: float, still: int) -> None:
    message = (f"seed {seed}: early stop after epoch {epoch} (no lower validation MSE since epoch {best_epoch}, "
               f"{best_loss:.4g}); {still} seed{'s' * (still != 1)} still training")
    LOG.info("CAE %s", message)
    jobs.to_terminal(f"cae {message}")
