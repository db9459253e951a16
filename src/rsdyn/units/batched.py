"""Batched torch forms of the per-unit correlations and rotation numbers, for a GPU
(``unit_stats.device``: cuda). Every unit, sublayer pair and null draw of a block is
one tensor operation on the device: the correlations of all sublayer pairs are one
batched matrix product, the rotation numbers of all draws of a null one pass of
``atan2``/``remainder``/``sum`` over a (draws, units, sublayers) tensor.

The draws are those of the CPU path (:func:`rsdyn.units.rotations.null_draws`,
:func:`rsdyn.units.surrogates.surrogate_draws`: the same seeded NumPy generators), so
the two paths differ only by round-off: the turns are summed directly here (the numba
kernels telescope them), the correlations come from a matrix product, the surrogates
from torch's FFT. A turn is an angle change wrapped to [-pi, pi); the two paths can only
disagree by a whole turn where a step is antiparallel to the previous one to within
round-off (measure zero for real data). The CPU numbers of the workflow never come from
here: ``unit_stats.device: cpu`` keeps the NumPy/numba kernels.

Every function takes NumPy arrays (float64) and a torch device and returns NumPy."""

from __future__ import annotations

import math

import numpy as np
import torch

from rsdyn.core.errors import UnitStatsInputError
from rsdyn.units.rotations import PERMUTATION_NULLS, RotationKernels, null_draws
from rsdyn.units.surrogates import SURROGATES, surrogate_draws

#: float64 elements of a (draws, trajectories, sublayers) tensor held at once (bounds the
#: device memory of a null: a few such tensors live together, 8 bytes each)
MAX_ELEMENTS = 1 << 25


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(device)


# --------------------------------------------------------------------------- correlations


def standardize(acts: torch.Tensor) -> torch.Tensor:
    """(N, S, U) -> centred and scaled so that the sum over samples of z^2 is 1 (NaN for a
    constant unit and sublayer, as the NumPy form)."""
    centred = acts - acts.mean(dim=0)
    return centred / torch.sqrt((centred * centred).sum(dim=0))


def correlations(acts: np.ndarray, bins: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``corr_consecutive`` (S - 1, U) and ``corr_pairs_hist`` (U, bins) of
    :mod:`rsdyn.units.correlations` for activations (N, S, U), on ``device``."""
    z = standardize(_tensor(acts, device))
    consecutive = (z[:, :-1] * z[:, 1:]).sum(dim=0)
    by_unit = z.permute(2, 1, 0)  # (U, S, N)
    matrix = torch.bmm(by_unit, by_unit.transpose(1, 2))  # (U, S, S)
    upper = torch.triu_indices(matrix.shape[1], matrix.shape[1], offset=1, device=matrix.device)
    return consecutive.cpu().numpy(), histogram_fractions(matrix[:, upper[0], upper[1]], bins).cpu().numpy()


def histogram_fractions(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Per row, the fraction of values in each of ``bins`` equal bins of [0, 1]; the bins
    and the treatment of 1.0, NaN and values outside [0, 1] are those of the NumPy form
    (the same bin edges, ``np.linspace``). (R, M) -> (R, bins) float64."""
    edges = torch.from_numpy(np.linspace(0.0, 1.0, bins + 1)).to(values.device, values.dtype)
    index = torch.searchsorted(edges, values.contiguous(), right=True) - 1
    index = torch.where(values == 1.0, bins - 1, index)
    inside = (values >= 0.0) & (values <= 1.0)
    index = torch.where(inside, index, bins)  # one spare bin for the values counted in none
    counts = torch.zeros(values.shape[0], bins + 1, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, index, torch.ones_like(values, dtype=torch.float64))
    return counts[:, :bins] / values.shape[1]


# --------------------------------------------------------------------------- rotation numbers


def gradient(trajectory: torch.Tensor) -> torch.Tensor:
    """``np.gradient`` along the last axis (unit spacing, first-order edges)."""
    inner = (trajectory[..., 2:] - trajectory[..., :-2]) / 2.0
    return torch.cat([trajectory[..., 1:2] - trajectory[..., :1], inner, trajectory[..., -1:] - trajectory[..., -2:-1]], dim=-1)


def tangent_turns(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed turns of the tangent of the curves (x_l, y_l) along the last axis: angle
    changes of atan2(dy, dx) wrapped to [-pi, pi), summed, divided by 2 pi."""
    theta = torch.atan2(torch.diff(y, dim=-1), torch.diff(x, dim=-1))
    wrapped = torch.remainder(torch.diff(theta, dim=-1) + math.pi, 2.0 * math.pi) - math.pi
    return wrapped.sum(dim=-1) / (2.0 * math.pi)


def rotation_number(trajectory: torch.Tensor) -> torch.Tensor:
    """R of each trajectory (..., n) -> (...): tangent turns of its phase portrait
    (a, np.gradient(a)) (turns do not change when the portrait is shifted by (a_0, g_0))."""
    if trajectory.shape[-1] < 2:
        raise UnitStatsInputError(f"the rotation number needs at least 2 sublayers; got {trajectory.shape[-1]}.")
    return tangent_turns(trajectory, gradient(trajectory))


def _null_trajectories(trajectories: torch.Tensor, null: str, random: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The curves of ``null`` for a run of draws (``random``: its index draws, shifts or
    phases): ``(x, y)`` (K, M, n) portraits for the point shuffle, else ``(a, None)``
    trajectories whose own portrait is turned."""
    n_sublayers = trajectories.shape[1]
    if null == "layer_shuffle":
        return trajectories[:, random].transpose(0, 1), None
    if null == "point_shuffle":
        slope = gradient(trajectories)
        return trajectories[:, random].transpose(0, 1), slope[:, random].transpose(0, 1)
    if null == "increment_shuffle":  # a_0, then a_0 + each permuted step in turn (the numba kernel's order)
        steps = torch.diff(trajectories, dim=-1)[:, random]  # (M, K, n - 1)
        start = trajectories[:, None, :1].expand(-1, random.shape[0], 1)
        return torch.cat([start, steps], dim=-1).cumsum(dim=-1).transpose(0, 1), None
    if null == "circular":
        index = (torch.arange(n_sublayers, device=random.device)[None, :] + random[:, None]) % n_sublayers
        return trajectories[:, index].transpose(0, 1), None
    if null == "phase":
        ramp = torch.linspace(0.0, 1.0, n_sublayers, dtype=trajectories.dtype, device=trajectories.device)
        line = trajectories[:, :1] + (trajectories[:, -1:] - trajectories[:, :1]) * ramp
        spectrum = torch.fft.rfft(trajectories - line, dim=-1)
        rotated = spectrum[None] * torch.polar(torch.ones_like(random), random)[:, None, :]
        return torch.fft.irfft(rotated, n=n_sublayers, dim=-1) + line[None], None
    raise UnitStatsInputError(f"unknown rotation null {null!r}.")


def null_rotations(trajectories: np.ndarray, null: str, n_draws: int, seed: int, device: torch.device,
                   max_elements: int = MAX_ELEMENTS) -> np.ndarray:
    """R of every trajectory (M, n) under ``n_draws`` seeded draws of ``null`` on
    ``device``: (K, M) float64, the draws of ``rsdyn.units.rotations.null_rotations``.
    Draws are taken in runs of at most ``max_elements`` / (M n) at a time."""
    tensor = _tensor(trajectories, device)
    n_rows, n_sublayers = tensor.shape
    if null in PERMUTATION_NULLS:
        random = torch.from_numpy(np.ascontiguousarray(null_draws(null, n_sublayers, n_draws, seed), dtype=np.int64)).to(device)
    elif null in SURROGATES:
        drawn = surrogate_draws(null, n_sublayers, n_draws, seed)
        random = torch.from_numpy(np.ascontiguousarray(drawn)).to(device)
    else:
        raise UnitStatsInputError(f"unknown rotation null {null!r}; allowed: {', '.join(PERMUTATION_NULLS + SURROGATES)}.")
    step = max(1, max_elements // max(1, n_rows * n_sublayers))
    out = torch.empty(n_draws, n_rows, dtype=torch.float64, device=device)
    for first in range(0, n_draws, step):
        x, y = _null_trajectories(tensor, null, random[first : first + step])
        out[first : first + step] = rotation_number(x) if y is None else tangent_turns(x, y)
    return out.cpu().numpy()


def observed_rotations(trajectories: np.ndarray, device: torch.device) -> np.ndarray:
    """R of every trajectory (M, n) on ``device``: (M,) float64."""
    return rotation_number(_tensor(trajectories, device)).cpu().numpy()


def rotation_kernels(device: torch.device) -> RotationKernels:
    """The kernels of :func:`rsdyn.units.rotations.rotations` on ``device``."""
    return RotationKernels(
        rotation_number=lambda trajectories: observed_rotations(trajectories, device),
        null_rotations=lambda trajectories, null, n_draws, seed: null_rotations(trajectories, null, n_draws, seed, device),
    )
