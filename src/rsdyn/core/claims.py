"""The claims registry and the verdicts a referee can sign.

``config/claims.yaml`` lists every claim of the paper (Figs. 1-4 and the text) and each
hypothesis beyond it: the sentence quoted with its section, ONE pre-registered statistic,
the unit its resamples draw, the direction, the null value and the smallest effect of
interest (the margin). This module reads and checks the registry and turns, for every
judged claim, the statistic's value and its resamples (an :class:`Estimate`, computed by
the stage that owns the statistic) into a verdict:

- one-sided percentile-bootstrap p-values, p = (1 + #{resamples on the null side}) /
  (B + 1), for three hypotheses: the effect lies beyond ``null + margin`` in the claimed
  direction (``p``), beyond ``null - margin`` against it (``p_opposite``), or within
  ``null +- margin`` (``p_equivalent``, two one-sided tests: the larger of the two);
- each family of p-values adjusted by Holm's step-down method across all judged claims;
- the verdict at one-sided level ``alpha`` = (1 - level) / 2 (so an unadjusted verdict
  agrees with the 95 % interval): ``reproduced`` (``supported`` beyond the paper) when
  the adjusted ``p`` is below alpha, ``opposite`` (``contradicted``) when the adjusted
  ``p_opposite`` is, ``equivalent`` when the adjusted ``p_equivalent`` is, else
  ``inconclusive``. A claim the paper states as "about 0", "the same" or "flat" is an
  equivalence test: its ``p`` is the TOST p-value and it is ``reproduced`` when the
  effect lies within the margin, ``opposite`` when it lies beyond it;
- a claim with a ``baseline`` (a trivial predictor the statistic must beat) is at most
  ``inconclusive`` unless its baseline statistic is beyond the baseline's null;
- a verdict is ``stable`` when the same verdict comes out for every bootstrap seed
  computed (``summary.stability_seeds``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rsdyn.core.schema import ConfigError

DEFAULT_REGISTRY = Path(__file__).resolve().parents[3] / "config" / "claims.yaml"
SOURCES = ("paper", "blog", "beyond")
TESTS = ("superiority", "equivalence")
VERDICTS = ("reproduced", "opposite", "equivalent", "inconclusive")
#: the words of a verdict on a hypothesis beyond the paper (never "reproduced")
BEYOND_WORDS = {"reproduced": "supported", "opposite": "contradicted", "equivalent": "equivalent", "inconclusive": "inconclusive"}
REQUIRED = ("id", "source", "section", "quote", "statistic")
#: the families of hypotheses, each Holm-adjusted across the judged claims
FAMILIES = ("primary", "opposite", "equivalent")
JUDGED_REQUIRED = ("definition", "unit", "test", "direction", "null_value", "margin")


@dataclass
class Estimate:
    """A statistic's value on the data and on its resamples (``samples``, (B,)), with what
    was resampled; ``extra`` holds what a reader needs beside it (the full-N value of an
    m-out-of-n statistic, the baseline's estimate...)."""

    value: float
    samples: np.ndarray
    resampled: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- registry


def load_registry(path: str | Path | None = None) -> dict[str, Any]:
    """The registry at ``path`` (default ``config/claims.yaml``), checked: one sentence
    naming the claim and the key on any problem."""
    path = Path(path) if path else DEFAULT_REGISTRY
    if not path.is_file():
        raise ConfigError(f"the claims registry {path} does not exist; give the path of a YAML registry such as config/claims.yaml.")
    try:
        registry = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the claims registry {path} cannot be read as YAML ({first}); fix or replace it.") from None
    check_registry(registry, str(path))
    return registry


def check_registry(registry: Mapping[str, Any], where: str = "the claims registry") -> None:
    """Every claim has the keys it needs and allowed values; ids are unique."""
    if not isinstance(registry, Mapping) or not isinstance(registry.get("claims"), list) or not registry["claims"]:
        raise ConfigError(f"Invalid claims registry {where}: it must be a mapping with a non-empty list 'claims'.")
    level = registry.get("level", 0.95)
    if not (isinstance(level, float) and 0 < level < 1):
        raise ConfigError(f"Invalid claims registry {where}: level = {level!r}; it must be a number strictly between 0 and 1.")
    seen: set[str] = set()
    for index, claim in enumerate(registry["claims"]):
        name = claim.get("id", f"claims[{index}]") if isinstance(claim, Mapping) else f"claims[{index}]"
        missing = [key for key in REQUIRED if key not in claim] if isinstance(claim, Mapping) else list(REQUIRED)
        if missing:
            raise ConfigError(f"Invalid claims registry {where}: claim {name} lacks {', '.join(missing)}.")
        if name in seen:
            raise ConfigError(f"Invalid claims registry {where}: claim id {name!r} appears twice; ids must be unique.")
        seen.add(name)
        if claim["source"] not in SOURCES:
            raise ConfigError(f"Invalid claims registry {where}: claim {name} source = {claim['source']!r}; allowed values are {', '.join(SOURCES)}.")
        if claim["statistic"] is None:
            if not claim.get("not_computed"):
                raise ConfigError(f"Invalid claims registry {where}: claim {name} has no statistic and no 'not_computed' reason.")
            continue
        missing = [key for key in JUDGED_REQUIRED if key not in claim]
        if missing:
            raise ConfigError(f"Invalid claims registry {where}: judged claim {name} lacks {', '.join(missing)}.")
        if claim["test"] not in TESTS:
            raise ConfigError(f"Invalid claims registry {where}: claim {name} test = {claim['test']!r}; allowed values are {', '.join(TESTS)}.")
        if claim["direction"] not in (">", "<"):
            raise ConfigError(f"Invalid claims registry {where}: claim {name} direction = {claim['direction']!r}; allowed values are '>', '<'.")
        if not (isinstance(claim["margin"], (int, float)) and claim["margin"] >= 0):
            raise ConfigError(f"Invalid claims registry {where}: claim {name} margin = {claim['margin']!r}; it must be a number >= 0.")
        if claim["test"] == "equivalence" and not claim["margin"] > 0:
            raise ConfigError(f"Invalid claims registry {where}: equivalence claim {name} needs a margin > 0.")


def judged(registry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The claims that carry a statistic, in registry order."""
    return [claim for claim in registry["claims"] if claim.get("statistic")]


# --------------------------------------------------------------------------- tests


def _tail(samples: np.ndarray, bound: float, side: str) -> float:
    """(1 + #{samples on ``side`` of ``bound``, inclusive}) / (B + 1); NaN samples count
    against the claim (as if on the null side)."""
    finite = np.isfinite(samples)
    on_side = (samples <= bound) if side == "below" else (samples >= bound)
    return (1.0 + float(np.sum(on_side & finite) + np.sum(~finite))) / (len(samples) + 1.0)


def pvalues(samples: np.ndarray, direction: str, null: float, margin: float) -> dict[str, float]:
    """One-sided percentile-bootstrap p-values of the three hypotheses (module docstring):
    ``beyond`` (the effect exceeds ``null + margin`` in ``direction``), ``against`` (it
    exceeds ``null - margin`` the other way), ``within`` (TOST: ``|effect - null| < margin``)."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    if direction == ">":
        beyond = _tail(samples, null + margin, "below")
        against = _tail(samples, null - margin, "above")
    else:
        beyond = _tail(samples, null - margin, "above")
        against = _tail(samples, null + margin, "below")
    within = max(_tail(samples, null + margin, "above"), _tail(samples, null - margin, "below")) if margin > 0 else 1.0
    return {"beyond": beyond, "against": against, "within": within}


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def percentile_interval(samples: np.ndarray, level: float) -> list[float | None]:
    tail = 100.0 * (1.0 - level) / 2.0
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return [None, None]
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _verdict(adjusted: Mapping[str, float], alpha: float, test: str, baseline_ok: bool) -> str:
    """The verdict from the Holm-adjusted p-values of the three families (``primary``,
    ``opposite``, ``equivalent``)."""
    if adjusted["primary"] < alpha:
        return "reproduced" if baseline_ok else "inconclusive"
    if adjusted["opposite"] < alpha:
        return "opposite"
    if test == "superiority" and adjusted.get("equivalent", 1.0) < alpha:
        return "equivalent"
    return "inconclusive"


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def judge(
    registry: Mapping[str, Any],
    estimates: Sequence[Mapping[str, Estimate]],
    n_resamples: int,
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """The claims table: one entry per claim of ``registry`` (judged ones with their
    verdict), from ``estimates[k][claim id]``, the estimates drawn with bootstrap seed
    ``seeds[k]`` (the first is the reported one; the others say whether the verdict is
    stable). A judged claim without an estimate is reported ``not computed`` with why."""
    level = float(registry.get("level", 0.95))
    alpha = (1.0 - level) / 2.0
    claims = judged(registry)
    per_seed: list[dict[str, dict[str, Any]]] = []
    for seed_estimates in estimates:
        present = [claim for claim in claims if claim["id"] in seed_estimates]
        raw = {claim["id"]: _raw_tests(claim, seed_estimates[claim["id"]]) for claim in present}
        adjusted: dict[str, dict[str, float]] = {claim["id"]: {} for claim in present}
        for family in FAMILIES:
            members = [claim for claim in present if family in raw[claim["id"]]]
            for claim, value in zip(members, holm([raw[claim["id"]][family] for claim in members]) if members else []):
                adjusted[claim["id"]][family] = float(value)
        outcome = {}
        for claim in present:
            estimate = seed_estimates[claim["id"]]
            baseline_ok = _baseline_ok(claim, estimate, alpha)
            verdict = _verdict(adjusted[claim["id"]], alpha, claim["test"], baseline_ok)
            outcome[claim["id"]] = {"raw": raw[claim["id"]], "adjusted": adjusted[claim["id"]], "verdict": verdict, "baseline_ok": baseline_ok}
        per_seed.append(outcome)
    table = []
    for claim in registry["claims"]:
        entry = {key: claim.get(key) for key in ("id", "source", "section", "figure", "quote", "statistic", "definition",
                                                  "unit", "test", "direction", "null_value", "margin", "other_readings")}
        entry = {key: value for key, value in entry.items() if value is not None}
        if not claim.get("statistic"):
            entry.update(verdict=None, not_computed=claim["not_computed"])
        elif not estimates or claim["id"] not in estimates[0]:
            entry.update(verdict=None, not_computed=claim.get("not_computed", "its stage did not run or its inputs are missing"))
        else:
            estimate = estimates[0][claim["id"]]
            first = per_seed[0][claim["id"]]
            words = BEYOND_WORDS if claim["source"] == "beyond" else {v: v for v in VERDICTS}
            verdicts = [outcome[claim["id"]]["verdict"] for outcome in per_seed if claim["id"] in outcome]
            entry.update(
                value=_finite(estimate.value),
                interval=percentile_interval(estimate.samples, level),
                level=level,
                resampled=estimate.resampled,
                n_resamples=int(n_resamples),
                seed=int(seeds[0]),
                p=float(first["raw"]["primary"]),
                p_holm=float(first["adjusted"]["primary"]),
                p_opposite=float(first["raw"]["opposite"]),
                p_opposite_holm=float(first["adjusted"]["opposite"]),
                alpha=alpha,
                verdict=words[first["verdict"]],
                verdict_seeds=[words[v] for v in verdicts],
                seeds=[int(s) for s in seeds],
                stable=len(set(verdicts)) == 1,
            )
            if "equivalent" in first["raw"]:
                entry.update(p_equivalent=float(first["raw"]["equivalent"]), p_equivalent_holm=float(first["adjusted"]["equivalent"]))
            if claim.get("baseline"):
                entry["baseline"] = dict(claim["baseline"])
                entry["baseline_beaten"] = first["baseline_ok"]
            entry.update({key: _plain(value) for key, value in estimate.extra.items() if key not in ("tests", "baseline")})
        table.append(entry)
    return table


def _raw_tests(claim: Mapping[str, Any], estimate: Estimate) -> dict[str, float]:
    """The claim's unadjusted p-values per family: ``primary`` (the claim holds: beyond the
    margin in its direction, or within the margin for an equivalence claim), ``opposite``
    (against it, beyond the margin) and, for a directional claim, ``equivalent``. A stage
    whose test is not a bootstrap (a surrogate test) gives its own p-values in
    ``extra['tests']``."""
    if "tests" in estimate.extra:
        return {family: float(value) for family, value in estimate.extra["tests"].items()}
    tests = pvalues(estimate.samples, claim["direction"], float(claim["null_value"]), float(claim["margin"]))
    if claim["test"] == "equivalence":
        return {"primary": tests["within"], "opposite": min(1.0, 2.0 * min(tests["beyond"], tests["against"]))}
    return {"primary": tests["beyond"], "opposite": tests["against"], "equivalent": tests["within"]}


def _baseline_ok(claim: Mapping[str, Any], estimate: Estimate, alpha: float) -> bool:
    """A claim with a ``baseline`` needs its baseline statistic (``extra['baseline']``, an
    :class:`Estimate`) beyond the baseline's null in the claim's direction (unadjusted)."""
    baseline = claim.get("baseline")
    if not baseline:
        return True
    other = estimate.extra.get("baseline")
    if not isinstance(other, Estimate):
        return False
    return pvalues(other.samples, baseline.get("direction", ">"), float(baseline.get("null_value", 0.0)), 0.0)["beyond"] < alpha


def _plain(value: Any) -> Any:
    if isinstance(value, Estimate):
        return {"value": _finite(value.value), "interval": percentile_interval(value.samples, 0.95), "resampled": value.resampled}
    if isinstance(value, (np.floating, float)):
        return _finite(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
