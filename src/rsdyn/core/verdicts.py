"""Bootstrap intervals and computed verdicts for the rows of ``summary.json``.

A row that compares two things (early vs late, within vs cross, layer vs layer, real vs
null) carries a percentile bootstrap interval of its statistic and a verdict computed
from it against the direction the paper states:

- ``reproduced``: the whole interval lies on the paper's side of the null value;
- ``opposite``: the whole interval lies on the other side;
- ``inconclusive``: the interval contains the null value (no difference shown).

Every row is a plain dict ``{value, paper, definition}``; comparing rows add
``interval`` ([low, high]), ``level``, ``expected`` (e.g. ``"> 1"``), ``resampled``
(what the bootstrap draws, and how often) and ``verdict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

VERDICTS = ("reproduced", "opposite", "inconclusive")
DIRECTIONS = (">", "<")
DEFAULT_RESAMPLES = 200
DEFAULT_LEVEL = 0.95


def bootstrap_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Seeded resamples with replacement of ``range(n)``: int64 ``(n_resamples, n)``."""
    if n < 1:
        raise ValueError(f"bootstrap needs at least one item to resample; got n = {n}.")
    if n_resamples < 1:
        raise ValueError(f"summary.bootstrap = {n_resamples}; it must be at least 1.")
    return np.random.default_rng([seed, n]).integers(0, n, size=(n_resamples, n))


def bootstrap(statistic: Callable[[np.ndarray], Any], n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``statistic(indices)`` for every seeded resample of ``range(n)``: float64 ``(n_resamples, ...)``.

    ``statistic`` receives an int array of ``n`` indices drawn with replacement and
    returns a number (or an array of fixed shape).
    """
    return np.asarray([statistic(rows) for rows in bootstrap_indices(n, n_resamples, seed)], dtype=np.float64)


def thirds(n: int) -> tuple[slice, slice]:
    """The first and the last third of ``n`` positions (at least one each): the early and
    late parts that every early-vs-late row and claim compares."""
    third = max(1, n // 3)
    return slice(0, third), slice(n - third, n)


def percentile_interval(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> np.ndarray:
    """Central ``level`` percentile interval over axis 0 of ``samples``, ignoring NaN: ``(2, ...)``."""
    if not 0 < level < 1:
        raise ValueError(f"interval level = {level}; it must lie strictly between 0 and 1.")
    tail = 100.0 * (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        return np.nanpercentile(np.asarray(samples, dtype=np.float64), [tail, 100.0 - tail], axis=0)


def verdict(interval, expected: str, null: float = 0.0) -> str:
    """``reproduced`` / ``opposite`` / ``inconclusive`` for an interval against the paper's
    stated direction ``expected`` (``">"``: the statistic exceeds ``null``; ``"<"``: below it)."""
    if expected not in DIRECTIONS:
        raise ValueError(f"expected direction {expected!r}; allowed: {', '.join(DIRECTIONS)}.")
    low, high = (float(v) for v in interval)
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    above, below = low > null, high < null
    if expected == "<":
        above, below = below, above
    if above:
        return "reproduced"
    if below:
        return "opposite"
    return "inconclusive"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def row(value: Any, paper: Any, definition: str) -> dict[str, Any]:
    """A plain row (no comparison): non-finite values become None."""
    return {"value": _finite_or_none(value), "paper": paper, "definition": definition}


def comparison_row(
    value: float,
    paper: Any,
    definition: str,
    samples: np.ndarray,
    expected: str,
    resampled: str,
    null: float = 0.0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """A comparing row: ``value`` with the percentile interval of its bootstrap ``samples``
    and the verdict against ``expected`` relative to ``null`` (0 for differences, 1 for
    ratios). ``resampled`` says what was drawn, e.g. "sequences (200 resamples, seed 0)"."""
    interval = percentile_interval(samples, level)
    out = row(value, paper, definition)
    out.update(
        interval=[_finite_or_none(float(interval[0])), _finite_or_none(float(interval[1]))],
        level=level,
        expected=f"{expected} {null:g}",
        resampled=resampled,
        verdict=verdict(interval, expected, null),
    )
    return out


def resampled_label(what: str, n_resamples: int, seed: int) -> str:
    """The ``resampled`` text of a row: ``"{what} ({n} resamples, seed {seed})"``."""
    return f"{what} ({n_resamples} resamples, seed {seed})"
