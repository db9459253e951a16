"""The claims registry and the verdicts: p-values and Holm against slow references,
verdict rules, baselines and stability, and the registry's checks."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from rsdyn.core.claims import Estimate, holm, judge, judged, load_registry, pvalues
from rsdyn.core.resampling import cluster_weights, counts, sequence_weights, subsample_weights, two_level_weights
from rsdyn.core.schema import ConfigError


def claim(claim_id="c", test="superiority", direction=">", null_value=0.0, margin=0.1, source="paper", **extra):
    return {"id": claim_id, "source": source, "section": "§0", "quote": "words", "statistic": f"stage.{claim_id}",
            "definition": "d", "unit": "sequences", "test": test, "direction": direction, "null_value": null_value,
            "margin": margin, **extra}


def registry(*claims):
    return {"level": 0.95, "claims": list(claims)}


# --------------------------------------------------------------------------- resampling


def test_counts_and_designs_against_loops():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 7, size=(5, 9))
    expected = np.array([[np.sum(row == i) for i in range(7)] for row in indices], dtype=float)
    np.testing.assert_array_equal(counts(indices, 7), expected)
    w = sequence_weights(11, 40, 3)
    assert w.shape == (40, 11) and np.all(w.sum(axis=1) == 11)
    np.testing.assert_array_equal(w, sequence_weights(11, 40, 3))  # seeded
    assert not np.array_equal(w, sequence_weights(11, 40, 4))
    sub = subsample_weights(20, 7, 30, 0)
    assert set(np.unique(sub)) <= {0.0, 1.0} and np.all(sub.sum(axis=1) == 7)


def test_cluster_weights_give_each_cluster_one_count_for_all_its_members():
    labels = np.array([5, 5, 5, 9, 9, 2])
    w = cluster_weights(labels, 200, 1)
    for row in w:
        assert row[0] == row[1] == row[2] and row[3] == row[4]
        assert row[[0, 3, 5]].sum() == 3  # three clusters drawn three times in all
    with pytest.raises(ValueError, match="at least one"):
        cluster_weights(np.array([]), 3, 0)


def test_two_level_weights_shapes_and_totals():
    groups, items = two_level_weights(5, 13, 25, 2)
    assert groups.shape == (25, 5) and np.all(groups.sum(axis=1) == 5)
    assert items.shape == (25, 13) and np.all(items.sum(axis=1) == 13)


# --------------------------------------------------------------------------- tests


def slow_pvalues(samples, direction, null_value, margin):
    """One-sided percentile p-values by explicit counting (the docstring's formulas)."""
    b = len(samples)
    sign = 1 if direction == ">" else -1
    beyond = (1 + sum(1 for s in samples if sign * s <= sign * (null_value + sign * margin))) / (b + 1)
    against = (1 + sum(1 for s in samples if sign * s >= sign * (null_value - sign * margin))) / (b + 1)
    upper = (1 + sum(1 for s in samples if s >= null_value + margin)) / (b + 1)
    lower = (1 + sum(1 for s in samples if s <= null_value - margin)) / (b + 1)
    return beyond, against, max(upper, lower)


@pytest.mark.parametrize("direction", [">", "<"])
def test_pvalues_match_counting(direction):
    rng = np.random.default_rng(1)
    samples = rng.normal(0.05, 0.1, 501)
    for null_value, margin in [(0.0, 0.0), (0.0, 0.05), (0.1, 0.02)]:
        got = pvalues(samples, direction, null_value, margin)
        beyond, against, within = slow_pvalues(samples, direction, null_value, margin)
        assert got["beyond"] == pytest.approx(beyond) and got["against"] == pytest.approx(against)
        if margin > 0:
            assert got["within"] == pytest.approx(within)


def test_nan_resamples_count_against_the_claim():
    samples = np.array([1.0, 2.0, np.nan, 3.0])
    assert pvalues(samples, ">", 0.0, 0.0)["beyond"] == pytest.approx(2 / 5)


def slow_holm(p):
    """Holm by its definition: adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, index in enumerate(order):
        out[index] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return out


def test_holm_matches_its_definition_on_random_p():
    rng = np.random.default_rng(2)
    for m in (1, 2, 5, 17):
        p = rng.uniform(0, 0.2, m)
        np.testing.assert_allclose(holm(p), slow_holm(list(p)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


# --------------------------------------------------------------------------- verdicts


def estimate(center, spread=0.01, n=2000, seed=0, **extra):
    samples = np.random.default_rng(seed).normal(center, spread, n)
    return Estimate(center, samples, "synthetic", extra)


def verdicts(reg, estimates_by_id, seeds=(0,)):
    per_seed = [estimates_by_id] * len(seeds)
    return {entry["id"]: entry for entry in judge(reg, per_seed, 2000, list(seeds))}


def test_verdicts_follow_the_interval_and_margin():
    reg = registry(claim("up"), claim("down"), claim("flat"), claim("wide"), claim("small"))
    out = verdicts(reg, {
        "up": estimate(1.0), "down": estimate(-1.0), "flat": estimate(0.0, 0.01), "wide": estimate(0.05, 0.5),
        "small": estimate(0.05, 0.01),  # clearly above 0 but below the margin 0.1: within +-margin
    })
    assert out["up"]["verdict"] == "reproduced" and out["down"]["verdict"] == "opposite"
    assert out["flat"]["verdict"] == "equivalent" and out["wide"]["verdict"] == "inconclusive"
    assert out["small"]["verdict"] == "equivalent"
    assert out["up"]["p_holm"] >= out["up"]["p"] and out["up"]["interval"][0] > 0.9


def test_equivalence_claims_and_beyond_the_paper_words():
    reg = registry(claim("same", test="equivalence", margin=0.2), claim("differs", test="equivalence", margin=0.2),
                   claim("beyond", source="beyond"))
    out = verdicts(reg, {"same": estimate(0.01), "differs": estimate(1.0), "beyond": estimate(1.0)})
    assert out["same"]["verdict"] == "reproduced" and out["differs"]["verdict"] == "opposite"
    assert out["beyond"]["verdict"] == "supported"


def test_holm_turns_a_lone_borderline_effect_inconclusive_among_many_claims():
    # p = 1 / 2001 * k: one resample at or below the bound gives p ~ 0.001
    samples = np.full(2000, 1.0)
    samples[:30] = -1.0  # 30 resamples on the null side: p = 31 / 2001 ~ 0.0155 < 0.025
    alone = verdicts(registry(claim("b", margin=0.0)), {"b": Estimate(1.0, samples, "s")})
    assert alone["b"]["verdict"] == "reproduced"
    many = registry(claim("b", margin=0.0), *(claim(f"x{i}", margin=0.0) for i in range(4)))
    out = verdicts(many, {"b": Estimate(1.0, samples, "s"), **{f"x{i}": estimate(0.0, 1.0, seed=i) for i in range(4)}})
    assert out["b"]["verdict"] == "inconclusive" and out["b"]["p_holm"] == pytest.approx(5 * 31 / 2001)


def test_a_claim_that_does_not_beat_its_baseline_is_at_most_inconclusive():
    base = {"statistic": "stage.base", "direction": ">", "null_value": 0.0, "what": "the mean predictor"}
    reg = registry(claim("ev", baseline=base))
    beaten = verdicts(reg, {"ev": estimate(1.0, baseline=estimate(0.5))})["ev"]
    not_beaten = verdicts(reg, {"ev": estimate(1.0, baseline=estimate(-0.01, 0.01))})["ev"]
    assert beaten["verdict"] == "reproduced" and beaten["baseline_beaten"]
    assert not_beaten["verdict"] == "inconclusive" and not not_beaten["baseline_beaten"]


def test_stability_over_seeds_and_not_computed_claims():
    reg = registry(claim("a"), {"id": "n", "source": "paper", "section": "§1", "quote": "q", "statistic": None, "not_computed": "why"})
    stable = judge(reg, [{"a": estimate(1.0)}, {"a": estimate(1.0, seed=1)}], 2000, [0, 1])
    assert stable[0]["stable"] and stable[0]["verdict_seeds"] == ["reproduced", "reproduced"]
    assert stable[1]["verdict"] is None and stable[1]["not_computed"] == "why"
    flip = judge(reg, [{"a": estimate(0.12, 0.01)}, {"a": estimate(0.08, 0.01)}], 2000, [0, 1])
    assert not flip[0]["stable"] and flip[0]["verdict"] == "reproduced"
    missing = judge(reg, [{}], 2000, [0])
    assert missing[0]["verdict"] is None and "did not run" in missing[0]["not_computed"]


def test_provider_supplied_tests_are_used():
    reg = registry(claim("s", margin=0.0))
    out = verdicts(reg, {"s": Estimate(0.3, np.full(2000, 0.3), "surrogates", {"tests": {"primary": 0.2, "opposite": 0.8}})})
    assert out["s"]["p"] == pytest.approx(0.2) and out["s"]["verdict"] == "inconclusive"


# --------------------------------------------------------------------------- registry


def test_the_shipped_registry_is_valid():
    reg = load_registry()
    ids = [entry["id"] for entry in reg["claims"]]
    assert len(ids) == len(set(ids)) >= 25
    assert all(entry["statistic"].split(".", 1)[0] in {"units", "geometry", "cae", "population", "jacobian"} for entry in judged(reg))
    assert {entry["source"] for entry in reg["claims"]} <= {"paper", "blog", "beyond"}
    for entry in reg["claims"]:
        if entry["source"] == "beyond":
            assert "beyond the paper" in entry["section"] or "Hypothesis" in entry["quote"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("unit"), "lacks unit"),
    (lambda c: c.update(direction="up"), "direction = 'up'"),
    (lambda c: c.update(test="equivalence", margin=0.0), "needs a margin > 0"),
    (lambda c: c.update(source="hearsay"), "source = 'hearsay'"),
])
def test_a_bad_registry_is_refused_naming_the_claim(tmp_path, edit, message):
    reg = registry(claim("first"))
    edit(reg["claims"][0])
    import yaml

    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(reg))
    with pytest.raises(ConfigError, match=message):
        load_registry(path)


def test_duplicate_ids_are_refused(tmp_path):
    import yaml

    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(registry(claim("same"), copy.deepcopy(claim("same")))))
    with pytest.raises(ConfigError, match="appears twice"):
        load_registry(path)


def test_quotes_are_the_papers_words():
    """Every quote of the paper is found, word for word (spaces and the math rendering
    aside), in the paper's text; beyond-the-paper quotes in the follow-up's abstract."""
    import re
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "paper"
    if not shared.exists():
        pytest.skip("the paper's text (../shared/paper) is not beside this checkout")

    def words(text):
        return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()

    paper = " ".join(words((shared / "transformer-dynamics-2502.12131.md").read_text()))
    follow_up = " ".join(words((shared / "follow-up-abstracts.txt").read_text()))
    for entry in load_registry()["claims"]:
        quote = words(entry["quote"])
        if entry["source"] == "paper":
            # math symbols are rendered as long LaTeX runs in the text: match the words around them
            pieces = [" ".join(chunk) for chunk in _split_at_math(quote) if chunk]
            assert all(piece in paper for piece in pieces), entry["id"]
        elif entry["id"].startswith("jacobian"):
            assert " ".join(quote) in follow_up, entry["id"]


def _split_at_math(quote):
    """Split a quote's words at symbols of inline math (h, l, attn, mlp, r, 0, 8)."""
    math = {"h", "l", "attn", "mlp", "r"}
    return [list(group) for is_math, group in itertools.groupby(quote, key=lambda w: w in math) if not is_math]


def test_a_baseline_is_resampled_over_its_own_unit():
    """report.claims.estimates asks the stage for a claim's baseline with the baseline's
    ``unit`` (where given), and attaches it to the claim's estimate."""
    from rsdyn.core.claims import Estimate
    from rsdyn.report.claims import estimates

    asked = []

    class Stage:
        def statistics(self):
            return ("effect", "floor")

        def estimate(self, names, unit, n_resamples, seed):
            asked.append((tuple(names), unit))
            return {name: Estimate(1.0, np.ones(n_resamples), unit) for name in names}

    claim = {"id": "c", "source": "beyond", "section": "s", "quote": "q", "statistic": "stage.effect", "definition": "d",
             "unit": "sequences", "test": "superiority", "direction": ">", "null_value": 0.0, "margin": 0.0,
             "baseline": {"statistic": "stage.floor", "unit": "sequences_seeds", "direction": ">", "null_value": 0.0}}
    out = estimates({"claims": [claim]}, {"stage": Stage()}, 10, 0)
    assert sorted(asked) == [(("effect",), "sequences"), (("floor",), "sequences_seeds")]
    assert out["c"].resampled == "sequences" and out["c"].extra["baseline"].resampled == "sequences_seeds"


def test_estimates_in_forked_processes_are_the_serial_ones():
    """report.claims.estimates_per_seed with 2 worker processes gives every seed's
    estimates of the serial loop, bit for bit, computed outside the parent process."""
    import os

    from rsdyn.report.claims import estimates_per_seed

    class Stage:
        def statistics(self):
            return ("effect", "floor", "other")

        def estimate(self, names, unit, n_resamples, seed):
            out = {}
            for name in names:
                rng = np.random.default_rng([seed, len(unit), sum(map(ord, name))])
                out[name] = Estimate(float(rng.normal()), rng.normal(size=n_resamples), unit, {"pid": os.getpid()})
            return out

    claims = [claim("effect", baseline={"statistic": "stage.floor", "unit": "sequences_seeds", "direction": ">", "null_value": 0.0}),
              claim("other", test="equivalence", margin=0.5)]
    serial = estimates_per_seed(registry(*claims), {"stage": Stage()}, 50, [0, 1, 2], workers=1)
    forked = estimates_per_seed(registry(*claims), {"stage": Stage()}, 50, [0, 1, 2], workers=2)
    assert len(serial) == len(forked) == 3
    for one, two in zip(serial, forked):
        assert one.keys() == two.keys() == {"effect", "other"}
        for key in one:
            assert one[key].value == two[key].value and np.array_equal(one[key].samples, two[key].samples)
            assert one[key].extra["pid"] == os.getpid() != two[key].extra["pid"]
        assert np.array_equal(one["effect"].extra["baseline"].samples, two["effect"].extra["baseline"].samples)
    assert not np.array_equal(serial[0]["other"].samples, serial[1]["other"].samples)  # the seeds differ
