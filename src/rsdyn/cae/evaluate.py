"""Test-set evaluation of the trained seeds (rule ``cae``): what ``cae/embedding.zarr``
holds, computed block by block on the model's device (float64 sums), so that a test set
larger than memory is evaluated with one block of states and one chunk of
reconstructions at a time.

Per training seed and test sequence (so that an interval can resample both):

- ``embedding`` (S, n, 2L, 2) float32: the 2-D code of every test state;
- ``reconstruction_sse`` (S, n, 2L) float64: ||x_is - y_is||^2 summed over units;
- ``residual_moments`` (S, n, 2L, 2) float64: mean and population variance over units
  of the residual x_is - y_is (the literal block EV of any resample, ``metrics.ev_block``);
- ``step_distance_per_sequence`` (S, n, 2L - 1) float64: 2-D distance between
  successive sublayers;

per test sequence, the same for every seed:

- ``mean_predictor_sse`` (n, 2L) float64: ||x_is - m_s||^2 with m_s the sublayer's
  training-set mean (the error of the sublayer-mean predictor, and the SST of the
  across-sequence EV, ``metrics.ev_across_sequences``);
- ``state_moments`` and ``mean_predictor_moments`` (n, 2L, 2) float64: mean and
  population variance over units of x_is and of x_is - m_s;

and ``train_sublayer_mean`` (2L, D) float64 (m_s), ``training_seeds`` (S,),
``test_sequences`` (n,), plus the per-seed curves Fig. 3 draws (see ``HeldOut.arrays``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rsdyn.cae.data import Moments
from rsdyn.cae.metrics import ev_across_sequences, ev_block, step_distances

#: float64 numbers of one chunk of residuals (S x samples x D) during evaluation
EVAL_ENTRIES = 2**22


def _moments_over_units(values: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., 2): mean and population variance over the last axis."""
    mean = values.mean(dim=-1)
    return torch.stack([mean, ((values - mean.unsqueeze(-1)) ** 2).mean(dim=-1)], dim=-1)


@torch.no_grad()
def sample_statistics(model, states: torch.Tensor, centre: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the test arrays need of a chunk of samples: ``states`` (b, D) float32 and
    ``centre`` (b, D) float64, each sample's training-set sublayer mean, on the model's
    device. Per seed: ``embedding`` (S, b, 2), ``reconstruction_sse`` (S, b),
    ``residual_moments`` (S, b, 2); per sample: ``mean_predictor_sse`` (b,),
    ``state_moments`` and ``mean_predictor_moments`` (b, 2). Sums in float64."""
    codes = model.encode(states)
    x = states.double()
    residual = x - model.decode(codes).double()
    offset = x - centre
    return {
        "embedding": codes.float(),
        "reconstruction_sse": (residual**2).sum(dim=-1),
        "residual_moments": _moments_over_units(residual),
        "mean_predictor_sse": (offset**2).sum(dim=-1),
        "state_moments": _moments_over_units(x),
        "mean_predictor_moments": _moments_over_units(offset),
    }


PER_SEED = ("embedding", "reconstruction_sse", "residual_moments")


class HeldOut:
    """The per-sample statistics of the test blocks, gathered in store order, and the test
    states' per-(sublayer, unit) moments (for the R^2 references)."""

    def __init__(self, seeds: Sequence[int], test_sequences: np.ndarray, train_sublayer_mean: np.ndarray):
        self.seeds = [int(s) for s in seeds]
        self.test_sequences = np.asarray(test_sequences)
        self.train_sublayer_mean = np.asarray(train_sublayer_mean, dtype=np.float64)
        self.parts: dict[str, list[np.ndarray]] = {}
        self.unit = Moments()

    def add(self, states: np.ndarray, statistics: dict[str, np.ndarray]) -> None:
        """One block: its states (rows, 2L, D) and ``sample_statistics`` of its rows * 2L
        samples in row-major order."""
        rows, n_sublayers = states.shape[:2]
        self.unit.add(states)
        for name, value in statistics.items():
            lead = (len(self.seeds),) if name in PER_SEED else ()
            self.parts.setdefault(name, []).append(np.asarray(value).reshape(*lead, rows, n_sublayers, *value.shape[len(lead) + 1 :]))

    def per_sequence(self) -> dict[str, np.ndarray]:
        """The per-sequence arrays (see the module's docstring), test sequences in store order."""
        out = {name: np.concatenate(parts, axis=1 if name in PER_SEED else 0) for name, parts in self.parts.items()}
        out["step_distance_per_sequence"] = step_distances(out["embedding"])
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of ``embedding.zarr``: the per-sequence arrays and, per seed, the curves
        of Fig. 3: ``ev_block_per_sublayer``, ``ev_across_sequences``, ``ev_per_sublayer``
        (R^2 against each unit's own test mean in the sublayer),
        ``ev_per_sublayer_pooled_reference`` (against the pooled test mean),
        ``test_mse_per_sublayer`` (S, 2L); ``step_distance``, ``step_distance_sem``
        (S, 2L - 1); ``mean_trajectory`` (S, 2L, 2); ``test_r2_pooled`` (S,); and
        ``test_variance_per_sublayer`` (2L,) (variance across test sequences, averaged
        over units)."""
        per = self.per_sequence()
        n, d_model = self.unit.count, self.unit.mean.shape[-1]
        residual_ss = per["reconstruction_sse"].sum(axis=1)  # (S, 2L)
        own_spread = self.unit.m2.sum(axis=-1)
        pooled_mean = self.unit.mean.mean(axis=0)
        pooled_spread = own_spread + n * ((self.unit.mean - pooled_mean) ** 2).sum(axis=-1)
        steps = per["step_distance_per_sequence"]
        with np.errstate(divide="ignore", invalid="ignore"):
            curves = {
                "ev_block_per_sublayer": np.stack([ev_block(per["state_moments"], per["residual_moments"][[k]]) for k in range(len(self.seeds))]),
                "ev_across_sequences": np.stack([ev_across_sequences(per["reconstruction_sse"][[k]], per["mean_predictor_sse"]) for k in range(len(self.seeds))]),
                "ev_per_sublayer": 1.0 - residual_ss / np.where(own_spread > 0, own_spread, np.nan),
                "ev_per_sublayer_pooled_reference": 1.0 - residual_ss / np.where(pooled_spread > 0, pooled_spread, np.nan),
                "test_mse_per_sublayer": residual_ss / (n * d_model),
                "step_distance": steps.mean(axis=1),
                "step_distance_sem": steps.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(steps.shape[::2]),
                "mean_trajectory": per["embedding"].mean(axis=1, dtype=np.float64),
            }
        arrays = {
            "training_seeds": np.asarray(self.seeds, dtype=np.int32),
            "test_sequences": self.test_sequences.astype(np.int32),
            "train_sublayer_mean": self.train_sublayer_mean,
            **per,
            **{name: value.astype(np.float32) for name, value in curves.items()},
            "test_variance_per_sublayer": (own_spread / (n * d_model)).astype(np.float32),
            "test_r2_pooled": 1.0 - residual_ss.sum(axis=1) / pooled_spread.sum(),
            "test_loss": residual_ss.sum(axis=1) / (n * len(own_spread) * d_model),
        }
        return arrays


@torch.no_grad()
def evaluate_seeds(model, source, train_sublayer_mean: np.ndarray, test_sequences: np.ndarray) -> HeldOut:
    """Stream the test blocks of ``source`` (a ``BlockSource``, store order) through every
    seed of ``model`` (a ``BatchedAutoencoder``): one block of states and one chunk of
    reconstructions (``EVAL_ENTRIES`` float64 numbers) at a time."""
    model.eval()
    n_seeds, device = len(model.seeds), model.input_mean.device
    held = HeldOut(model.seeds, test_sequences, train_sublayer_mean)
    means = torch.from_numpy(np.asarray(train_sublayer_mean, dtype=np.float64)).to(device)
    n_sublayers, d_model = means.shape
    chunk = max(n_sublayers, EVAL_ENTRIES // (n_seeds * d_model))
    for _, states in source.blocks():
        flat = states.reshape(-1, d_model)
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(flat), chunk):
            stop = min(start + chunk, len(flat))
            sublayer = torch.arange(start, stop, device=device) % n_sublayers
            for name, value in sample_statistics(model, flat[start:stop], means[sublayer]).items():
                parts.setdefault(name, []).append(value)
        joined = {name: torch.cat(values, dim=1 if name in PER_SEED else 0).cpu().numpy() for name, values in parts.items()}
        held.add(states.cpu().numpy(), joined)
    return held
