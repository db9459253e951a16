"""The population stage's judged statistic (beyond the paper: the paper judges single
units, not the population): are the population's trajectories more rotational than the
tensor-maximum-entropy (TME) null says chance makes them?

``jpca_ratio_beyond_tme``: the jPCA ratio (R^2 of the best rotational dynamics over R^2
of the best linear dynamics, Churchland et al. 2012, soft-normalised states, all
sublayers, original text) minus the median of the same ratio on the TME surrogates. The
test is the surrogate test, p = (1 + #{surrogates with a ratio at least the observed}) /
(n + 1) (and the mirror for "less rotational than chance"); the interval resamples the
sequences (PCs held fixed) with the null's median held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rsdyn.core.claims import Estimate
from rsdyn.population.summary import bootstrap_jpca_ratio

STATISTICS = ("jpca_ratio_beyond_tme",)


class PopulationClaims:
    """``population``: ``read_group(population.zarr)``."""

    def __init__(self, population: Mapping):
        self.group = population["original"]["jpca"]

    def statistics(self) -> tuple[str, ...]:
        return STATISTICS

    def estimate(self, names: Sequence[str], unit: str, n_resamples: int, seed: int) -> dict[str, Estimate]:
        if unit != "sequences":
            raise ValueError(f"the population statistic resamples sequences, not {unit!r}.")
        null = np.asarray(self.group["tme_jpca_ratio"], dtype=np.float64)
        null = null[np.isfinite(null)]
        observed = float(self.group["jpca_ratio"])
        median = float(np.median(null))
        samples = bootstrap_jpca_ratio(self.group["scores"], n_resamples, seed) - median
        tests = {
            "primary": (1.0 + np.sum(null >= observed)) / (len(null) + 1.0),
            "opposite": (1.0 + np.sum(null <= observed)) / (len(null) + 1.0),
        }
        extra = {
            "tests": tests,
            "observed_ratio": observed,
            "tme_surrogates": int(len(null)),
            "tme_null_median": median,
            "tme_null_q95": float(np.percentile(null, 95)),
        }
        label = (f"sequences ({n_resamples} resamples, seed {seed}, PCs held fixed) for the interval; the p-value from "
                 f"{len(null)} TME surrogates")
        return {name: Estimate(observed - median, samples, label, extra) for name in names if name in STATISTICS}
