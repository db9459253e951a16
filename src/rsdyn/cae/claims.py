"""The CAE stage's judged statistics (Fig. 3), over training seeds and test sequences.

Each resample draws the training seeds with replacement and, independently, the test
sequences (:func:`rsdyn.core.resampling.two_level_weights`); a statistic is computed per
seed on the sequence-weighted test set and averaged over the drawn seeds, so the
interval holds the variance of training as well as that of the data. With one seed
stored the seed level is a constant and the interval holds the data's variance only
(its ``resampled`` text says so).

From ``cae/embedding.zarr``:

- ``cae_step_log_ratio``: log of the mean 2-D step length between consecutive sublayers
  over the last third of sublayers over the first third (each seed's own code);
- ``cae_turning_late_minus_early``: mean |turning angle| between consecutive steps over
  the last third minus the first third (radians; negative = straighter late);
- ``cae_ev_across_late_minus_early`` and ``cae_ev_across_late``: the across-sequence
  explained variance per sublayer, 1 - sum_i w_i SSE_is / sum_i w_i SST_is with SST
  against the sublayer's training-set mean (the sublayer-mean predictor's squared error,
  so that predictor scores exactly 0), late third minus early third, and the late third
  alone (the baseline the claim must beat first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.core.resampling import two_level_weights, with_observed
from rsdyn.core.verdicts import thirds

EMBEDDING_STATISTICS = ("cae_step_log_ratio", "cae_turning_late_minus_early")
EV_STATISTICS = ("cae_ev_across_late_minus_early", "cae_ev_across_late")
#: names of the per-seed, per-test-sequence arrays the EV statistics need
SSE, SST = "reconstruction_sse", "mean_predictor_sse"


def step_curves(embedding: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequence-weighted mean step length (B, S - 1) and mean |turning angle| (B, S - 2) of
    trajectories (n, S, 2) for count weights (B, n)."""
    steps = np.diff(np.asarray(embedding, dtype=np.float64), axis=1)  # (n, S - 1, 2)
    lengths = np.linalg.norm(steps, axis=-1)
    angles = np.arctan2(steps[..., 1], steps[..., 0])
    turning = np.abs(np.mod(np.diff(angles, axis=1) + np.pi, 2.0 * np.pi) - np.pi)
    share = weights / weights.sum(axis=1, keepdims=True)
    return share @ lengths, share @ turning


def ev_across(sse: np.ndarray, sst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Across-sequence EV per sublayer: 1 - sum_i w_i SSE_is / sum_i w_i SST_is, (n, S) each -> (B, S)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (weights @ sse) / (weights @ sst)


class CAEClaims:
    """``arrays``: ``read_group(cae/embedding.zarr)``."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        embedding = np.asarray(arrays["embedding"], dtype=np.float64)
        self.embedding = embedding[None] if embedding.ndim == 3 else embedding  # (seeds, n, S, 2)
        self.n_seeds, self.n_test, self.n_sublayers = self.embedding.shape[:3]
        self.sse = np.asarray(arrays[SSE], dtype=np.float64) if SSE in arrays else None
        if self.sse is not None and self.sse.ndim == 2:
            self.sse = self.sse[None]
        self.sst = np.asarray(arrays[SST], dtype=np.float64) if SST in arrays else None

    def statistics(self) -> tuple[str, ...]:
        return EMBEDDING_STATISTICS + (EV_STATISTICS if self.sse is not None and self.sst is not None else ())

    def _per_seed(self, names: Sequence[str], seed_index: int, weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        lengths, turning = step_curves(self.embedding[seed_index], weights)
        early, late = thirds(lengths.shape[1])
        out["cae_step_log_ratio"] = np.log(lengths[:, late].mean(axis=1) / lengths[:, early].mean(axis=1))
        early, late = thirds(turning.shape[1])
        out["cae_turning_late_minus_early"] = turning[:, late].mean(axis=1) - turning[:, early].mean(axis=1)
        if any(name in EV_STATISTICS for name in names):
            ev = ev_across(self.sse[seed_index], self.sst, weights)
            early, late = thirds(self.n_sublayers)
            out["cae_ev_across_late"] = np.nanmean(ev[:, late], axis=1)
            out["cae_ev_across_late_minus_early"] = out["cae_ev_across_late"] - np.nanmean(ev[:, early], axis=1)
        return out

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        if unit != "seeds_sequences":
            raise ValueError(f"the CAE statistics resample training seeds and test sequences, not {unit!r}.")
        seed_counts, sequence_counts = two_level_weights(self.n_seeds, self.n_test, n_resamples, seed)
        seed_counts = with_observed(seed_counts)
        sequence_counts = with_observed(sequence_counts)
        per_seed = [self._per_seed(names, k, sequence_counts) for k in range(self.n_seeds)]
        share = seed_counts / seed_counts.sum(axis=1, keepdims=True)
        label = (f"{self.n_seeds} training seeds drawn with replacement and the {self.n_test} test sequences "
                 f"({n_resamples} resamples, seed {seed})")
        if self.n_seeds == 1:
            label += "; ONE training seed stored: training variance is not in the interval"
        out = {}
        for name in names:
            values = np.stack([entry[name] for entry in per_seed], axis=1)  # (B + 1, seeds)
            combined = np.nansum(share * values, axis=1)
            out[name] = Estimate(float(combined[0]), combined[1:], label, {"training_seeds": self.n_seeds})
        return out
