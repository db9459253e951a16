"""The geometry stage's judged statistics: the PCA view of Fig. 4C and the recovery of
teleported trajectories (Fig. 4D, §3.4).

PCA (:class:`PCAClaims`): ``pca_pooled_ev_late_minus_early`` is Fig. 4C as drawn, the
explained variance of each sublayer's states with the pooled PCs (all ``pca.n_components``
of them) and the pooled mean, R^2 against the sublayer's own mean, the median over the last
quarter of sublayers minus the median over the first quarter: later sublayers better explained by the same
components means they need fewer. The pooled PCs and mean are held at their fit to all
states (40,000 rows at N = 661); the resamples draw sequences and recompute each
sublayer's sums of squares and own mean.

Teleportation (:class:`TeleportClaims`): every statistic is scale-free (each position at
sublayer s divided by the corpus states' PC1-PC2 spread at s, the ``scaled`` reading of
:mod:`rsdyn.geometry.teleport_metrics`) and uses ONE horizon for every layer compared,
the smallest any of them allows (the last layer leaves one sublayer). Resamples draw the
grid points with replacement, the same draw at every layer (the grid index is the same
relative position in every layer's grid). With ``mid`` the teleport layers strictly
between the first and the last, and ``ends`` the first and the last:

- ``teleport_mse_mid_over_ends``: log of the geometric mean over mid layers of the mean
  over points of the scaled MSE to the control over the horizon, over the same for ends;
- ``teleport_spread_mid_over_ends``: log of the same ratio of the scaled spread of the
  points at the horizon over their spread at injection;
- ``teleport_last_over_first_distance``: log of the mean scaled distance from the control
  at the horizon after teleporting into the last layer over that of the first layer;
- ``teleport_lower_over_higher_recovery``: log of the median scaled distance ratio (end /
  start) of the lowest mid layer over that of the highest mid layer.

Every pair of layers is also reported (log ratio of the mean scaled MSE, interval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.core.resampling import sequence_weights, with_observed
from rsdyn.geometry.pca import quarter_size

PCA_STATISTICS = ("pca_pooled_ev_late_minus_early",)
TELEPORT_STATISTICS = (
    "teleport_mse_mid_over_ends", "teleport_spread_mid_over_ends", "teleport_last_over_first_distance",
    "teleport_lower_over_higher_recovery",
)


class PCAClaims:
    """``states`` (N, 2L, D) array (zarr or numpy), the pooled ``mean`` (D,) and ``components`` (K, D)."""

    def __init__(self, states, mean: np.ndarray, components: np.ndarray):
        self.states = states
        self.n_samples, self.n_sublayers, _ = states.shape
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)

    def statistics(self) -> tuple[str, ...]:
        return PCA_STATISTICS

    def ev_per_sublayer(self, weights: np.ndarray) -> np.ndarray:
        """R^2 of each sublayer with all pooled components, for count weights (B, N): (B, 2L)."""
        total = weights.sum(axis=1)
        out = np.empty((len(weights), self.n_sublayers))
        for s in range(self.n_sublayers):
            block = np.asarray(self.states[:, s, :], dtype=np.float64)
            centred = block - self.mean
            scores = centred @ self.components.T
            residual = np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", scores, scores)
            shift = block.mean(axis=0)
            own = block - shift
            own_ss = np.einsum("ij,ij->i", own, own)
            own_mean = weights @ own / total[:, None]
            total_ss = weights @ own_ss - total * np.einsum("bd,bd->b", own_mean, own_mean)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, s] = 1.0 - (weights @ residual) / np.where(total_ss > 0, total_ss, np.nan)
        return out

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        if unit != "sequences":
            raise ValueError(f"the PCA statistics resample sequences, not {unit!r}.")
        weights = with_observed(sequence_weights(self.n_samples, n_resamples, seed))
        ev = self.ev_per_sublayer(weights)
        q = quarter_size(self.n_sublayers)
        values = np.nanmedian(ev[:, -q:], axis=1) - np.nanmedian(ev[:, :q], axis=1)
        label = f"sequences ({n_resamples} resamples, seed {seed}); pooled PCs and mean held at their fit to all states"
        return {name: Estimate(float(values[0]), values[1:], label) for name in names if name in PCA_STATISTICS}


def _scaled(group: Mapping[str, np.ndarray], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid trajectories (P, 2L - 2l, 2) and control (2L, 2) divided by the data spread."""
    sigma = np.asarray(group["data_spread"], dtype=np.float64)
    trajectories = np.asarray(group["trajectories"], dtype=np.float64) / sigma[2 * layer :, None]
    control = np.asarray(group["control"], dtype=np.float64) / sigma[:, None]
    return trajectories, control


class TeleportClaims:
    """``groups``: ``{layer: arrays}`` of ``teleport.zarr`` (:func:`rsdyn.geometry.run.read_teleport`)."""

    def __init__(self, groups: Mapping[int, Mapping[str, np.ndarray]]):
        self.layers = sorted(int(layer) for layer in groups)
        self.n_points = len(groups[self.layers[0]]["trajectories"])
        self.horizon = min(len(groups[layer]["trajectories"][0]) - 1 for layer in self.layers)
        self.per_point: dict[int, dict[str, np.ndarray]] = {}
        for layer in self.layers:
            trajectories, control = _scaled(groups[layer], layer)
            first, h = 2 * layer, self.horizon
            start, end = trajectories[:, 0], trajectories[:, h]
            initial = np.linalg.norm(start - control[first], axis=-1)
            final = np.linalg.norm(end - control[first + h], axis=-1)
            window = trajectories[:, 1 : h + 1] - control[first + 1 : first + h + 1]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(initial > 0, final / np.where(initial > 0, initial, 1.0), np.nan)
            self.per_point[layer] = {
                "mse": np.mean(np.sum(np.square(window), axis=-1), axis=-1), "final": final, "ratio": ratio,
                "start": start, "end": end,
            }

    def statistics(self) -> tuple[str, ...]:
        return TELEPORT_STATISTICS if len(self.layers) >= 3 else ()

    def _per_layer(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Per resample (B, n_layers): mean scaled MSE, mean final distance, spread ratio,
        weighted median distance ratio."""
        share = weights / weights.sum(axis=1, keepdims=True)
        out = {key: np.empty((len(weights), len(self.layers))) for key in ("mse", "final", "spread", "ratio")}
        for column, layer in enumerate(self.layers):
            points = self.per_point[layer]
            out["mse"][:, column] = share @ points["mse"]
            out["final"][:, column] = share @ points["final"]
            out["spread"][:, column] = _weighted_spread(points["end"], share) / _weighted_spread(points["start"], share)
            out["ratio"][:, column] = _weighted_median(points["ratio"], weights)
        return out

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        if unit != "grid_points":
            raise ValueError(f"the teleport statistics resample grid points, not {unit!r}.")
        weights = with_observed(sequence_weights(self.n_points, n_resamples, seed))
        per_layer = self._per_layer(weights)
        mid = np.arange(1, len(self.layers) - 1)
        ends = np.array([0, len(self.layers) - 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            log = {key: np.log(value) for key, value in per_layer.items()}
        values = {
            "teleport_mse_mid_over_ends": log["mse"][:, mid].mean(axis=1) - log["mse"][:, ends].mean(axis=1),
            "teleport_spread_mid_over_ends": log["spread"][:, mid].mean(axis=1) - log["spread"][:, ends].mean(axis=1),
            "teleport_last_over_first_distance": log["final"][:, -1] - log["final"][:, 0],
            "teleport_lower_over_higher_recovery": log["ratio"][:, mid[0]] - log["ratio"][:, mid[-1]],
        }
        label = f"grid points ({n_resamples} resamples, seed {seed}), the same draw at every layer"
        extra = {"horizon": self.horizon, "layers": self.layers, "pairs": self._pairs(log["mse"])}
        return {name: Estimate(float(values[name][0]), values[name][1:], label, dict(extra)) for name in names if name in values}

    def _pairs(self, log_mse: np.ndarray) -> dict[str, dict]:
        """Every pair of layers: log(mean scaled MSE of a / of b) with its 95 % interval."""
        out = {}
        for i, a in enumerate(self.layers):
            for j in range(i + 1, len(self.layers)):
                difference = log_mse[:, i] - log_mse[:, j]
                low, high = np.nanpercentile(difference[1:], [2.5, 97.5])
                out[f"{a} vs {self.layers[j]}"] = {"log_mse_ratio": float(difference[0]), "interval": [float(low), float(high)]}
        return out


def _weighted_spread(points: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Weighted mean squared distance of the points (P, 2) to their weighted centroid: (B,)."""
    centroid = share @ points  # (B, 2)
    squared = share @ np.sum(points * points, axis=1)
    return squared - np.sum(centroid * centroid, axis=1)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of ``values`` (P,) under count weights (B, P), NaN values left out: (B,)."""
    finite = np.isfinite(values)
    order = np.argsort(np.where(finite, values, np.inf))
    sorted_values = values[order]
    cumulative = np.cumsum(weights[:, order] * finite[order], axis=1)
    half = cumulative[:, -1:] / 2.0
    index = np.argmax(cumulative >= half, axis=1)
    return sorted_values[index]
