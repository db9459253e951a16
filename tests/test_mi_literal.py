"""The paper's written MI sum (``mi_kde_literal``) against scipy.stats.gaussian_kde, one pair at a time."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import gaussian_kde

from rsdyn.units import mi
from rsdyn.units import unit_stats as us

EPS = 1e-10


def literal_scipy(x: np.ndarray, y: np.ndarray, eps: float = EPS) -> tuple[float, float]:
    """sum_i p(x_i, y_i) log((p(x_i, y_i) + eps) / (p(x_i) p(y_i) + eps)) with scipy, and the
    bound sum_i p_i (|log r_i| + 2) that scales its rounding error (a relative error d in each
    density moves term i by at most d p_i (|log r_i| + 2))."""
    joint = np.vstack([x, y])
    p_xy = gaussian_kde(joint)(joint)
    p_x, p_y = gaussian_kde(x)(x), gaussian_kde(y)(y)
    log_ratio = np.log((p_xy + eps) / (p_x * p_y + eps))
    total = 0.0
    for p, lr in zip(p_xy, log_ratio):  # the written sum, term by term
        total += p * lr
    return total, float(np.sum(p_xy * (np.abs(log_ratio) + 2.0)))


@pytest.mark.parametrize(("precision", "relative"), [("float64", 1e-10), ("auto", 2e-6)])
def test_literal_sum_matches_scipy(precision, relative):
    # float64 kernels: density errors ~ N * 1e-16; float32 kernels (CPU auto): each kernel
    # value to ~3e-7, partial sums of <= 256 float32 terms: ~1e-6 relative in the worst case
    acts = us.synthetic_activations(120, 3, 4, seed=5).astype(np.float64)
    acts[:, 2:] *= 7.0  # later sublayers spread more: the literal sum must fall with them
    got = mi.mi_kde_estimates(acts, EPS, "cpu", precision)
    for t in range(acts.shape[1] - 1):
        for u in range(acts.shape[2]):
            expected, scale = literal_scipy(acts[:, t, u], acts[:, t + 1, u])
            assert abs(got["mi_kde_literal"][t, u] - expected) <= relative * scale, (t, u)
    np.testing.assert_array_equal(got["mi_kde"], mi.mi_kde(acts, EPS, "cpu", precision))


def test_literal_pairs_equal_the_consecutive_version_and_scale_with_the_spread():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 90))
    y = 0.6 * x + 0.8 * rng.standard_normal((2, 90))
    literal = mi.mi_kde_literal_pairs(x, y, precision="float64")
    acts = np.stack([x[0], y[0]], axis=1)[:, :, None]
    assert mi.mi_kde_estimates(acts, precision="float64")["mi_kde_literal"][0, 0] == pytest.approx(literal[0], rel=1e-12)
    # densities scale as 1 / (sd_x sd_y) while the log ratio is scale-free (eps = 0, which
    # would otherwise weigh 1e-10 against products ~1e-4): x10 on both -> /100
    unscaled = mi.mi_kde_literal_pairs(x, y, eps=0.0, precision="float64")
    scaled = mi.mi_kde_literal_pairs(10 * x, 10 * y, eps=0.0, precision="float64")
    np.testing.assert_allclose(scaled, unscaled / 100.0, rtol=1e-9)
    # the resubstitution MI is scale-free
    np.testing.assert_allclose(mi.mi_kde_pairs(10 * x, 10 * y, eps=0.0, precision="float64"),
                               mi.mi_kde_pairs(x, y, eps=0.0, precision="float64"), rtol=1e-9)
