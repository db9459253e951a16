"""Surrogate trajectories: the same sequence with its temporal order destroyed in a
controlled way, for the nulls of the rotation number."""

from __future__ import annotations

import numpy as np

from rsdyn.core.errors import UnitStatsInputError

#: the smooth surrogates (``unit_stats.surrogate``)
SURROGATES = ("phase", "circular")


def surrogate_draws(kind: str, n_sublayers: int, n_surrogates: int, seed: int, draws: slice | None = None) -> np.ndarray:
    """The seeded random part of ``n_surrogates`` surrogates (``draws`` selects some):
    ``circular``: the shifts (K,) in 1..n-1; ``phase``: the Fourier phases (K, n // 2 + 1),
    0 at frequency 0 (and at the Nyquist frequency for even n)."""
    rng = np.random.default_rng([seed, 1])
    draws = slice(None) if draws is None else draws
    if kind == "circular":
        return rng.integers(1, n_sublayers, size=n_surrogates)[draws]
    if kind != "phase":
        raise UnitStatsInputError(f"unit_stats.surrogate = {kind!r}; allowed values are {', '.join(map(repr, SURROGATES))}.")
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_surrogates, n_sublayers // 2 + 1))[draws]
    phases[:, 0] = 0.0
    if n_sublayers % 2 == 0:
        phases[:, -1] = 0.0
    return phases


def surrogate_trajectories(
    trajectory: np.ndarray, kind: str, n_surrogates: int, seed: int, draws: slice | None = None
) -> np.ndarray:
    """Smooth surrogates of each trajectory (U, n) -> (U, n_surrogates, n).

    ``phase``: the straight line from a_0 to a_{n-1} is removed, the Fourier phases of
    the rest are randomised (amplitudes kept, the same random phases for every unit),
    and the line is added back: same trend, mean and power spectrum, no temporal order.
    ``circular``: the sequence is rotated by a random shift 1..n-1.
    ``draws`` selects some of the ``n_surrogates`` seeded draws (all by default); the
    first k draws of a longer request are the same k draws (:func:`surrogate_draws`).
    """
    n_units, n_sublayers = trajectory.shape
    random = surrogate_draws(kind, n_sublayers, n_surrogates, seed, draws)
    if kind == "circular":
        index = (np.arange(n_sublayers)[None, :] + random[:, None]) % n_sublayers
        return trajectory[:, index]
    ramp = np.linspace(0.0, 1.0, n_sublayers)
    line = trajectory[:, :1] + (trajectory[:, -1:] - trajectory[:, :1]) * ramp
    spectrum = np.fft.rfft(trajectory - line, axis=-1)
    randomised = np.fft.irfft(spectrum[:, None, :] * np.exp(1j * random)[None], n=n_sublayers, axis=-1)
    return randomised + line[:, None, :]
