"""The claims table of a run: every registered claim judged on the run's stores.

Each stage that owns statistics gives a provider (``rsdyn.<stage>.claims``) with
``statistics()`` and ``estimate(names, unit, n_resamples, seed)``. This module builds the
providers from the run's stores, asks each for the statistics the registry names, once
per (provider, resampling unit, bootstrap seed), and hands the estimates to
:func:`rsdyn.core.claims.judge` (p-values, Holm, verdicts, stability).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rsdyn.core.claims import Estimate, judge, judged, load_registry

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = {"claims_resamples": 2000, "stability_seeds": 5, "seed": 0, "mi_units": 32}


def _distinct_states(layer_stats_path) -> Any:
    import pandas as pd

    table = pd.read_csv(layer_stats_path)
    rows = table[(table["kind"] == "sublayer") & (table["condition"] == "original")].sort_values("index")
    return rows["distinct_states"].to_numpy() if "distinct_states" in rows else None


def providers(stores: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{stage: provider}`` for the stages whose stores are given (``stores`` maps
    ``activations``, ``unit_stats``, ``layer_stats``, ``pca``, ``cae``, ``teleport``,
    ``population``, ``jacobian`` to paths; missing or None: that stage is skipped)."""
    from rsdyn.core.store import read_group

    out: dict[str, Any] = {}
    if stores.get("activations") and stores.get("layer_stats"):
        from rsdyn.units.claims import units_claims

        unit_stats = read_group(stores["unit_stats"]) if stores.get("unit_stats") else None
        mi = {"units": int(settings["mi_units"]), "seed": 0}
        out["units"] = units_claims(stores["activations"], unit_stats, _distinct_states(stores["layer_stats"]), mi)
    if (stores.get("activations") and stores.get("pca")) or stores.get("teleport"):
        out["geometry"] = _GeometryProviders(stores)
    if stores.get("population"):
        from rsdyn.population.claims import PopulationClaims

        out["population"] = PopulationClaims(read_group(stores["population"]))
    if stores.get("cae"):
        from rsdyn.cae.claims import CAEClaims

        out["cae"] = CAEClaims(read_group(Path(stores["cae"]) / "embedding.zarr"))
    if stores.get("jacobian"):
        from rsdyn.jacobian.claims import jacobian_claims

        out["jacobian"] = jacobian_claims(stores["jacobian"])
    return out


class _GeometryProviders:
    """The PCA and teleport providers behind one stage name."""

    def __init__(self, stores: Mapping[str, Any]):
        from rsdyn.core.store import open_group, read_group
        from rsdyn.geometry.claims import PCAClaims, TeleportClaims
        from rsdyn.geometry.run import read_teleport

        self.parts = []
        if stores.get("activations") and stores.get("pca"):
            pca = read_group(stores["pca"])
            condition = open_group(stores["pca"]).attrs.get("condition", "original")
            self.parts.append(PCAClaims(open_group(stores["activations"])[condition], pca["mean"], pca["components"]))
        if stores.get("teleport"):
            self.parts.append(TeleportClaims(read_teleport(stores["teleport"])))

    def statistics(self) -> tuple[str, ...]:
        return tuple(name for part in self.parts for name in part.statistics())

    def estimate(self, names, unit, n_resamples, seed) -> dict[str, Estimate]:
        out = {}
        for part in self.parts:
            own = [name for name in names if name in part.statistics()]
            if own:
                out.update(part.estimate(own, unit, n_resamples, seed))
        return out


def plan(registry: Mapping[str, Any], stage_providers: Mapping[str, Any]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``{(stage, resampling unit): [(claim id, statistic name), ...]}``: the groups of
    statistics one provider call estimates together (a claim's baseline as ``id#baseline``)."""
    wanted: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for claim in judged(registry):
        stage, name = claim["statistic"].split(".", 1)
        if stage in stage_providers and name in stage_providers[stage].statistics():
            wanted[(stage, claim["unit"])].append((claim["id"], name))
        baseline = claim.get("baseline")
        if baseline and stage in stage_providers:
            base_stage, base_name = baseline["statistic"].split(".", 1)
            if base_stage == stage and base_name in stage_providers[stage].statistics():
                wanted[(stage, baseline.get("unit", claim["unit"]))].append((f"{claim['id']}#baseline", base_name))
    return dict(wanted)


def _group_estimate(stage_providers, stage: str, unit: str, pairs, n_resamples: int, seed: int) -> dict[str, Estimate]:
    names = sorted({name for _, name in pairs})
    log.info("claims: %s statistics %s, %d resamples of %s, seed %d", stage, names, n_resamples, unit, seed)
    return stage_providers[stage].estimate(names, unit, n_resamples, seed)


def _assemble(groups: Mapping[tuple[str, str], list[tuple[str, str]]], values: Mapping[tuple[str, str], Mapping[str, Estimate]]) -> dict[str, Estimate]:
    """The groups' estimates keyed by claim id, each baseline folded into its claim's ``extra``."""
    out: dict[str, Estimate] = {}
    for key, pairs in groups.items():
        for claim_id, name in pairs:
            if name in values[key]:
                out[claim_id] = values[key][name]
    for claim_id in [key for key in out if key.endswith("#baseline")]:
        owner = claim_id.removesuffix("#baseline")
        baseline = out.pop(claim_id)
        if owner in out:
            out[owner] = Estimate(out[owner].value, out[owner].samples, out[owner].resampled, {**out[owner].extra, "baseline": baseline})
    return out


def estimates(registry: Mapping[str, Any], stage_providers: Mapping[str, Any], n_resamples: int, seed: int) -> dict[str, Estimate]:
    """``{claim id: Estimate}`` of every judged claim whose stage is present, for one seed."""
    from rsdyn.core.jobs import progress

    groups = plan(registry, stage_providers)
    values = {}
    for (stage, unit), pairs in progress(list(groups.items()), desc=f"claims, bootstrap seed {seed}", unit="group"):
        values[(stage, unit)] = _group_estimate(stage_providers, stage, unit, pairs, n_resamples, seed)
    return _assemble(groups, values)


def estimates_per_seed(
    registry: Mapping[str, Any], stage_providers: Mapping[str, Any], n_resamples: int, seeds: list[int], workers: int = 1
) -> list[dict[str, Estimate]]:
    """:func:`estimates` for each of ``seeds``. With ``workers`` > 1 the (seed, group)
    estimates run in that many forked processes, one numerical thread each; each group's estimate depends only on its stores, seed and unit, so the
    results are those of the serial loop."""
    groups = plan(registry, stage_providers)
    # group by group, each for every seed: the registry's first groups (the units
    # statistics) cost the most, so they start first and the short ones fill in at the end
    tasks = [(seed, stage, unit, pairs) for (stage, unit), pairs in groups.items() for seed in seeds]
    workers = min(int(workers), len(tasks))
    if workers <= 1:
        return [estimates(registry, stage_providers, n_resamples, seed) for seed in seeds]
    from rsdyn.core.jobs import progress
    from rsdyn.core.threads import forked_map

    def work(task) -> dict[str, Estimate]:
        seed, stage, unit, pairs = task
        return _group_estimate(stage_providers, stage, unit, pairs, n_resamples, seed)

    results: dict[int, dict[str, Estimate]] = {}
    for index, values in progress(forked_map(work, tasks, workers), total=len(tasks),
                                  desc=f"claims, {len(seeds)} bootstrap seed(s), {workers} processes", unit="group"):
        results[index] = values
    out = []
    for seed in seeds:
        values = {(stage, unit): results[index] for index, (task_seed, stage, unit, _) in enumerate(tasks) if task_seed == seed}
        out.append(_assemble(groups, values))
    return out


def claims_table(
    stores: Mapping[str, Any], settings: Mapping[str, Any] | None = None, registry_path: str | Path | None = None,
    samples: dict[str, Any] | None = None, workers: int = 1,
) -> list[dict[str, Any]]:
    """The judged claims table of one run (see the module docstring). ``settings``: the
    run's ``summary`` section (``claims_resamples``, ``stability_seeds``, ``seed``,
    ``mi_units``). ``samples``, when given, receives each judged claim's value and its
    resamples at the first seed (``{id: (B,) array}``, ``{id}:value``): the same seed and
    design draw the same resamples in every run of the same sequences, so two runs'
    samples are paired (the controls compare trained with initial weights this way).
    ``workers``: processes for the (seed, group) estimates (:func:`estimates_per_seed`)."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    registry = load_registry(registry_path)
    stage_providers = providers(stores, settings)
    seeds = [int(settings["seed"]) + k for k in range(max(1, int(settings["stability_seeds"])))]
    per_seed = estimates_per_seed(registry, stage_providers, int(settings["claims_resamples"]), seeds, workers)
    if samples is not None and per_seed:
        for claim_id, estimate in per_seed[0].items():
            samples[claim_id] = np.asarray(estimate.samples, dtype=np.float64)
            samples[f"{claim_id}:value"] = np.float64(estimate.value)
    return judge(registry, per_seed, int(settings["claims_resamples"]), seeds)
