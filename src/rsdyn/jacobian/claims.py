"""The Jacobian stage's judged statistics (beyond the paper: the authors' follow-up).

From ``jacobian.zarr`` (per weights group, per sampled sequence and transition):

- ``rotation_index_early_minus_late``: the rotation index of J (share of the spectrum's
  weight in complex pairs), mean over the early third of transitions minus the late third,
  mean over sequences (trained weights): "from ... rotation-dominated early layers to
  near-symmetric late layers";
- ``rotation_gradient_trained_minus_initial``: that gradient for the trained weights minus
  the same at initialisation (paired over the sequences; the initialisation seeds stored
  are averaged): "this gradient ... [is] learned rather than architectural";
- ``product_rank_fraction``: the entropy effective rank of the cumulative product
  J_{2L-1} ... J_0 over D, mean over sequences (trained): "a cumulative low-rank
  bottleneck that funnels perturbations into a small fraction of the residual stream's
  effective dimensions".

Resamples draw the sampled sequences with replacement (and, for the learned statistic,
the initialisation groups stored, each ``initial`` or ``initial_{k}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.core.resampling import sequence_weights, two_level_weights, with_observed

STATISTICS = ("rotation_index_early_minus_late", "rotation_gradient_trained_minus_initial", "product_rank_fraction")


def thirds(n: int) -> tuple[slice, slice]:
    third = max(1, n // 3)
    return slice(0, third), slice(n - third, n)


def gradient(per_sequence: np.ndarray) -> np.ndarray:
    """Early-third mean minus late-third mean over transitions (last axis) of (n, T) -> (n,)."""
    early, late = thirds(per_sequence.shape[-1])
    return np.nanmean(per_sequence[..., early], axis=-1) - np.nanmean(per_sequence[..., late], axis=-1)


class JacobianClaims:
    """``groups``: ``{weights: arrays}`` of ``jacobian.zarr`` (``trained`` and the initial groups)."""

    def __init__(self, groups: Mapping[str, Mapping[str, np.ndarray]], d_model: int):
        self.trained = groups["trained"]
        self.initial = [groups[name] for name in sorted(groups) if name == "initial" or name.startswith("initial_")]
        self.n_sequences = np.asarray(self.trained["rotation_index"]).shape[0]
        self.d_model = int(d_model)

    def statistics(self) -> tuple[str, ...]:
        names = ("rotation_index_early_minus_late", "product_rank_fraction")
        return names + (("rotation_gradient_trained_minus_initial",) if self.initial else ())

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        out = {}
        if unit == "sequences":
            weights = with_observed(sequence_weights(self.n_sequences, n_resamples, seed))
            share = weights / weights.sum(axis=1, keepdims=True)
            label = f"the {self.n_sequences} sampled sequences ({n_resamples} resamples, seed {seed})"
            per_sequence = {
                "rotation_index_early_minus_late": gradient(np.asarray(self.trained["rotation_index"], np.float64)),
                "product_rank_fraction": np.asarray(self.trained["cumulative_effective_rank_entropy"], np.float64)[:, -1] / self.d_model,
            }
            for name in names:
                if name in per_sequence:
                    values = share @ per_sequence[name]
                    out[name] = Estimate(float(values[0]), values[1:], label)
        elif unit == "init_seeds_sequences" and "rotation_gradient_trained_minus_initial" in names:
            groups, weights = two_level_weights(len(self.initial), self.n_sequences, n_resamples, seed)
            groups = with_observed(groups)
            weights = with_observed(weights)
            share = weights / weights.sum(axis=1, keepdims=True)
            trained = share @ gradient(np.asarray(self.trained["rotation_index"], np.float64))
            initial = np.stack([share @ gradient(np.asarray(g["rotation_index"], np.float64)) for g in self.initial], axis=1)
            values = trained - (groups * initial).sum(axis=1) / groups.sum(axis=1)
            label = (f"the {self.n_sequences} sampled sequences and the {len(self.initial)} initialisation(s) stored "
                     f"({n_resamples} resamples, seed {seed})")
            out["rotation_gradient_trained_minus_initial"] = Estimate(float(values[0]), values[1:], label, {"initial_seeds": len(self.initial)})
        return out


def jacobian_claims(path) -> JacobianClaims:
    """:class:`JacobianClaims` of a ``jacobian.zarr``."""
    from rsdyn.core.store import read_group

    groups = {name: arrays for name, arrays in read_group(path).items() if isinstance(arrays, Mapping)}
    d_model = int(np.asarray(groups["trained"]["eigenvalues"]).shape[-1])
    return JacobianClaims(groups, d_model)
