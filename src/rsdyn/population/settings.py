"""The ``jpca`` and ``tme`` sections: depth windows, defaults and the checks of the
settings against the capture's shape, at config time and in the job. Imports no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rsdyn.core.errors import PopulationInputError
from rsdyn.core.schema import ConfigError

SECTIONS = ("jpca", "tme")


def default_windows(n_sublayers: int, n_windows: int = 4) -> list[list[int]]:
    """Contiguous [start, stop) sublayer ranges: the quarters of the sublayers (fewer,
    equal parts when a quarter would be shorter than 3 sublayers)."""
    n_windows = max(1, min(n_windows, n_sublayers // 3))
    edges = np.round(np.linspace(0, n_sublayers, n_windows + 1)).astype(int)
    return [[int(a), int(b)] for a, b in zip(edges[:-1], edges[1:])]


def resolve_windows(windows: Sequence[Sequence[int]] | None, n_sublayers: int) -> list[list[int]]:
    """``jpca.windows`` as [start, stop) pairs (null = quarters); raises on a bad range."""
    resolved = default_windows(n_sublayers) if windows is None else [[int(a), int(b)] for a, b in windows]
    for start, stop in resolved:
        if not 0 <= start < stop <= n_sublayers or stop - start < 3:
            raise PopulationInputError(
                f"jpca.windows has [{start}, {stop}]; each window must satisfy 0 <= start, "
                f"start + 3 <= stop <= {n_sublayers} (the number of sublayers)."
            )
    return resolved


DEFAULT_JPCA = {"k": 6, "windows": None, "normalize": "soft"}

DEFAULT_TME = {"n_surrogates": 1000, "unit_surrogates": 1000, "seed": 0, "floor": 1e-10, "tol": 1e-9, "max_iter": 200}


def check_population_settings(jpca_settings: Mapping[str, Any], tme_settings: Mapping[str, Any], n_samples: int, n_sublayers: int, d_model: int) -> None:
    """Raise one clear PopulationInputError when the settings do not fit the capture's shape."""
    k = int({**DEFAULT_JPCA, **jpca_settings}["k"])
    windows = resolve_windows({**DEFAULT_JPCA, **jpca_settings}["windows"], n_sublayers)
    shortest = min(stop - start for start, stop in windows)
    limit = min(n_samples * shortest - 1, d_model)
    if not 2 <= k <= limit:
        raise PopulationInputError(
            f"jpca.k = {k} does not fit the capture ({n_samples} samples, shortest window {shortest} "
            f"sublayers, {d_model} units); allowed is 2 to {limit}."
        )
    if n_samples < 2:
        raise PopulationInputError(f"the population stage needs at least 2 samples; the capture has {n_samples}.")
    for key in ("n_surrogates", "unit_surrogates"):
        if int({**DEFAULT_TME, **tme_settings}[key]) < 1:
            raise PopulationInputError(f"tme.{key} must be at least 1.")


def check_config(section: str, run: Mapping[str, Any], shape) -> None:
    """Config-time checks of ``jpca`` where the model's layer count is known: every depth
    window lies within the model's 2L sublayers and spans at least 3; ``jpca.k`` fits the
    model's width and the states of the shortest window."""
    if section != "jpca" or shape.n_layers is None:
        return
    try:
        windows = resolve_windows(run["jpca"]["windows"], 2 * shape.n_layers)
    except PopulationInputError as err:
        raise ConfigError(str(err)) from None
    k = run["jpca"]["k"]
    n_samples = run["corpus"].get("n_samples")
    limits = [shape.d_model] if shape.d_model else []
    if n_samples:
        limits.append(n_samples * min(stop - start for start, stop in windows) - 1)
    if limits and k > min(limits):
        raise ConfigError(
            f"jpca.k = {k} exceeds {min(limits)}, the model width or the number of "
            "states in the shortest jPCA window (corpus.n_samples x its sublayers, minus 1); lower jpca.k."
        )
