"""Population stage entry (rule ``population``): jPCA of each condition's states against
TME surrogates, and every unit's R against TME, as the arrays and attributes of
``population.zarr`` (:mod:`rsdyn.population.population` holds the definitions)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.core.errors import PopulationInputError
from rsdyn.core.jobs import progress
from rsdyn.population.population import (
    CONDITIONS,
    condition_population,
    population_steps,
)
from rsdyn.population.settings import (
    DEFAULT_JPCA,
    DEFAULT_TME,
    check_population_settings,
    resolve_windows,
)


def population_arrays(
    store_path: str | Path, jpca_settings: Mapping[str, Any], tme_settings: Mapping[str, Any], fdr_q: float = 0.05, log=None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays and attributes of ``population.zarr`` from ``activations.zarr``;
    ``fdr_q`` is the Benjamini-Hochberg level of the per-unit TME tests (``unit_stats.fdr_q``)."""
    from rsdyn.core.store import open_group

    group = open_group(store_path)
    missing = [condition for condition in CONDITIONS if condition not in group]
    if missing:
        raise PopulationInputError(f"{store_path} has no array {', '.join(map(repr, missing))}; expected {', '.join(CONDITIONS)}.")
    shape = group["original"].shape
    check_population_settings(jpca_settings, tme_settings, *shape)
    arrays = {}
    windows = resolve_windows({**DEFAULT_JPCA, **jpca_settings}["windows"], shape[1])
    bar = progress(total=len(CONDITIONS) * population_steps(len(windows)), desc="population jPCA and TME fits", unit="fit")
    for condition in CONDITIONS:
        if log:
            log.info("population: %s %s", condition, shape)
        states = np.asarray(group[condition][...], dtype=np.float64)
        if not np.isfinite(states).all():
            raise PopulationInputError(f"activations '{condition}' has NaN or inf values; every activation must be finite.")
        arrays[condition] = condition_population(states, jpca_settings, tme_settings, fdr_q, on_step=lambda: bar.update(1))
    bar.close()
    attrs = {key: group.attrs[key] for key in ("model_name", "model_id", "model_revision", "n_layers", "d_model", "sublayer_names") if key in group.attrs}
    attrs.update(
        jpca={**DEFAULT_JPCA, **jpca_settings},
        tme={**DEFAULT_TME, **tme_settings},
        windows=resolve_windows({**DEFAULT_JPCA, **jpca_settings}["windows"], shape[1]),
        n_samples=int(shape[0]),
        fdr_q=float(fdr_q),
    )
    return arrays, attrs


def run_population(store_path, out_path, jpca_settings: Mapping[str, Any], tme_settings: Mapping[str, Any], fdr_q: float = 0.05) -> None:
    """Rule ``population``: :func:`population_arrays` of ``activations.zarr`` -> ``population.zarr``."""
    from rsdyn.core.store import write_group

    log = logging.getLogger(__name__)
    arrays, attrs = population_arrays(store_path, jpca_settings, tme_settings, fdr_q, log=log)
    write_group(out_path, arrays, attrs=attrs)
    for condition, groups in arrays.items():
        jpca = groups["jpca"]
        log.info(
            "%s: jpca_ratio %.3f (TME percentile %.1f), TME fits: %d and %d Newton steps",
            condition, float(jpca["jpca_ratio"]), float(jpca["tme_percentile"]),
            int(jpca["tme_iterations"]), int(groups["tme_rotations"]["tme_iterations"]),
        )
    log.info("wrote %s", out_path)
