"""Bootstrap intervals and verdicts of summary rows."""

from __future__ import annotations

import numpy as np
import pytest

from rsdyn.core import verdicts


def test_bootstrap_indices_are_seeded_and_in_range():
    first = verdicts.bootstrap_indices(50, 30, seed=3)
    np.testing.assert_array_equal(first, verdicts.bootstrap_indices(50, 30, seed=3))
    assert first.shape == (30, 50) and first.min() >= 0 and first.max() < 50
    assert not np.array_equal(first, verdicts.bootstrap_indices(50, 30, seed=4))


def test_interval_of_a_known_difference_covers_it():
    rng = np.random.default_rng(0)
    true_difference = 0.3
    a = rng.normal(true_difference, 1.0, 400)
    samples = verdicts.bootstrap(lambda rows: a[rows].mean(), len(a), 400, seed=1)
    low, high = verdicts.percentile_interval(samples)
    assert low < true_difference < high
    # a percentile interval of the mean is about +-1.96 standard errors wide
    assert (high - low) == pytest.approx(2 * 1.96 * a.std(ddof=1) / np.sqrt(len(a)), rel=0.2)


def test_percentile_interval_matches_numpy_and_skips_nan():
    samples = np.array([np.nan, *np.arange(1.0, 101.0)])
    np.testing.assert_allclose(verdicts.percentile_interval(samples), np.percentile(np.arange(1.0, 101.0), [2.5, 97.5]))


@pytest.mark.parametrize(
    ("interval", "expected", "null", "result"),
    [
        ((0.1, 0.5), ">", 0, "reproduced"),
        ((-0.5, -0.1), ">", 0, "opposite"),
        ((-0.1, 0.5), ">", 0, "inconclusive"),
        ((-0.5, -0.1), "<", 0, "reproduced"),
        ((0.1, 0.5), "<", 0, "opposite"),
        ((1.2, 3.0), ">", 1, "reproduced"),
        ((0.5, 0.9), ">", 1, "opposite"),
        ((float("nan"), 1.0), ">", 0, "inconclusive"),
    ],
)
def test_verdict(interval, expected, null, result):
    assert verdicts.verdict(interval, expected, null) == result


def test_verdict_flips_when_the_sign_flips():
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 1.0, 200)
    up = verdicts.comparison_row(a.mean(), "> 0", "d", verdicts.bootstrap(lambda r: a[r].mean(), 200), ">", "items")
    down = verdicts.comparison_row(-a.mean(), "> 0", "d", verdicts.bootstrap(lambda r: -a[r].mean(), 200), ">", "items")
    assert (up["verdict"], down["verdict"]) == ("reproduced", "opposite")
    assert up["interval"][0] == pytest.approx(-down["interval"][1])


def test_rows_are_json_plain():
    plain = verdicts.row(np.float32(np.nan), None, "d")
    assert plain == {"value": None, "paper": None, "definition": "d"}
    assert isinstance(verdicts.row(np.int64(3), 1, "d")["value"], int)
    with pytest.raises(ValueError, match="expected direction"):
        verdicts.verdict((0, 1), "!=")
