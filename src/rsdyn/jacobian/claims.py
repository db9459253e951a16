"""The Jacobian stage's judged statistics (beyond the paper: the authors' follow-up).

From ``jacobian.zarr``: per weights group (``trained``; the baselines ``initial``, one
row set per init seed, ``svd_matched`` and ``norm_matched``, the trained updates with
their singular values kept or their Frobenius norm kept) rows indexed by ``sequence``
and ``draw`` (:mod:`rsdyn.jacobian.statistics`). The statistics:

- ``rotation_index_early_minus_late``: the rotation index of J (share of the spectrum's
  weight in complex pairs), mean over the early third of transitions minus the late
  third, mean over the sequences (trained weights): "from ... rotation-dominated early
  layers to near-symmetric late layers";
- ``rotation_gradient_learned``: the smallest, over every baseline stored, of that
  gradient for the trained weights minus the same for the baseline. A learned gradient
  must exceed every baseline (initialisation and both surrogates), not only the
  initialisation: an intersection-union test, whose resamples take the minimum in each
  resample (its p is at least every single comparison's);
- ``product_rank_fraction``: the entropy effective rank of the cumulative product
  J_{2L-1} ... J_0 over D, mean over the sequences (trained weights): "a cumulative
  low-rank bottleneck ... a small fraction of the residual stream's effective
  dimensions";
- ``product_rank_learned``: the largest, over every baseline, of the trained product's
  rank fraction minus the baseline's (the collapse is learned when even the closest
  baseline keeps more dimensions); also the baseline the bottleneck claim must beat
  (random matrices of the trained size collapse too).

A resample draws the sequences with replacement, once for every group (so the
differences are paired by sequence), and within each baseline its init seeds or
surrogate draws with replacement (:func:`rsdyn.jacobian.statistics.resamples`). Row 0 of
every array is the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.jacobian.statistics import (
    STATISTICS,
    Resamples,
    group_statistic,
    observed,
    resamples,
    row_index,
)

TRAINED = "trained"
BASELINES = ("initial", "svd_matched", "norm_matched")
UNITS = ("sequences", "sequences_seeds")


def with_data(resampled: Resamples, data: Resamples) -> Resamples:
    """``data`` (every count 1) as row 0 of ``resampled``."""
    draws = {name: np.concatenate([data.draws[name], counts]) for name, counts in resampled.draws.items()}
    return Resamples(np.concatenate([data.sequences, resampled.sequences]), draws)


def restricted(arrays: Mapping[str, Any], groups: Sequence[str], positions: np.ndarray) -> dict[str, Any]:
    """The rows of ``groups`` whose sequence is one of ``positions`` (positions in
    ``sample_indices``), their sequences renumbered 0..k-1 in the order of ``positions``:
    the design on which the trained weights and every baseline share their sequences."""
    positions = np.asarray(positions, dtype=np.int64)
    renumber = {int(position): k for k, position in enumerate(positions)}
    out: dict[str, Any] = {"sample_indices": np.asarray(arrays["sample_indices"])[positions]}
    for name in groups:
        group = arrays[name]
        sequence, draw = row_index(group)
        keep = np.isin(sequence, positions)
        rows = len(sequence)
        subset = {key: np.asarray(value)[keep] for key, value in group.items()
                  if key not in ("sequence", "draw") and np.ndim(value) >= 1 and len(value) == rows}
        subset["sequence"] = np.asarray([renumber[int(s)] for s in sequence[keep]], dtype=np.int64)
        subset["draw"] = draw[keep]
        out[name] = subset
    return out


class JacobianClaims:
    """``arrays``: the groups of ``jacobian.zarr``, its ``sample_indices`` and
    ``baseline_positions``. The statistics of the trained weights alone use every sampled
    sequence; the comparisons with the baselines use the baselines' sequences
    (``baseline_positions``) for every group, so that each difference is paired."""

    def __init__(self, arrays: Mapping[str, Any], d_model: int):
        self.baselines = [name for name in BASELINES if isinstance(arrays.get(name), Mapping)]
        self.all = arrays
        if self.baselines:
            n_rows = len(np.asarray(arrays[TRAINED]["rotation_index"]))
            positions = np.asarray(arrays.get("baseline_positions", np.arange(n_rows)), dtype=np.int64)
            self.paired = restricted(arrays, (TRAINED, *self.baselines), positions)
        self.d_model = int(d_model)

    def statistics(self) -> tuple[str, ...]:
        trained = ("rotation_index_early_minus_late", "product_rank_fraction")
        return trained + (("rotation_gradient_learned", "product_rank_learned") if self.baselines else ())

    def per_row(self, name: str):
        """The per-row value of a statistic: :data:`rsdyn.jacobian.statistics.STATISTICS`'
        rotation gradient, or its final product rank as a fraction of D."""
        if name.startswith("rotation"):
            return STATISTICS["rotation_index_early_minus_late"][0]
        rank = STATISTICS["cumulative_rank_final"][0]
        return lambda group: rank(group) / self.d_model

    def values(self, name: str, resampled: Resamples) -> np.ndarray:
        per_row = self.per_row(name)
        if name in ("rotation_index_early_minus_late", "product_rank_fraction"):
            return group_statistic(self.all, TRAINED, per_row, resampled)
        means = {group: group_statistic(self.paired, group, per_row, resampled) for group in (TRAINED, *self.baselines)}
        differences = np.stack([means[TRAINED] - means[baseline] for baseline in self.baselines])
        return differences.min(axis=0) if name == "rotation_gradient_learned" else differences.max(axis=0)

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        if unit not in UNITS:
            raise ValueError(f"the jacobian stage cannot resample {unit!r}; it resamples {', '.join(UNITS)}.")
        needs = {name: "sequences_seeds" if name.endswith("learned") else "sequences" for name in names}
        wrong = [name for name in names if needs[name] != unit]
        if wrong:
            raise ValueError(f"jacobian.{wrong[0]} is resampled over {needs[wrong[0]]}, not {unit}; fix its unit in the claims registry.")
        arrays = self.paired if unit == "sequences_seeds" else self.all
        resampled = with_data(resamples(arrays, n_resamples, seed), observed(arrays))
        if unit == "sequences":  # trained rows only: the baselines' draws do not enter
            resampled = Resamples(resampled.sequences, {})
        n_sequences = resampled.sequences.shape[1]
        if unit == "sequences_seeds":
            label = (f"the {n_sequences} sequences every baseline shares with the trained weights and each baseline's "
                     f"init seeds or draws ({', '.join(self.baselines)})")
        else:
            label = f"the {n_sequences} sampled sequences"
        label += f" ({n_resamples} resamples, seed {seed})"
        out = {}
        for name in names:
            values = self.values(name, resampled)
            extra = {"baselines": list(self.baselines)} if name.endswith("learned") else {}
            out[name] = Estimate(float(values[0]), values[1:], label, extra)
        return out


def jacobian_claims(path) -> JacobianClaims:
    """:class:`JacobianClaims` of a ``jacobian.zarr``."""
    from rsdyn.core.store import read_group

    arrays = read_group(path)
    d_model = int(np.asarray(arrays[TRAINED]["eigenvalues"]).shape[-1])
    return JacobianClaims(arrays, d_model)
