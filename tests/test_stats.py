"""Study statistics: the exact signed-rank test against scipy and hand-computed cases (ties,
all-equal pairs, n = 1), Holm, the hierarchical bootstrap and the fold-level pairing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unimri.studies.stats import (compare, compare_study, fold_means, format_diff, format_p,
                                  hierarchical_bootstrap_ci, holm, signed_rank_test)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("n", [2, 3, 5, 8, 12])
def test_signed_rank_matches_scipy_exact_without_ties(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        d = rng.normal(0.1, 1.0, n)  # continuous: no ties, no zeros
        ours = signed_rank_test(d)
        ref = scipy_stats.wilcoxon(d, method="exact")
        assert ours.p_value == pytest.approx(ref.pvalue, abs=1e-12)
        assert ours.statistic == pytest.approx(ref.statistic)
        assert ours.min_p == pytest.approx(2 / 2 ** n)


def _signed_rank_sum(d, axis=-1):
    """W+ with mid-ranks of |d| (zero differences excluded beforehand)."""
    ranks = scipy_stats.rankdata(np.abs(d), axis=axis)
    return np.sum(ranks * (d > 0), axis=axis)


def test_signed_rank_with_ties_is_the_exact_permutation_distribution():
    d = np.array([0.1, 0.2, 0.2, -0.1, 0.3, 0.3, 0.3])
    ref = scipy_stats.permutation_test((d,), _signed_rank_sum, permutation_type="samples",
                                       alternative="two-sided", n_resamples=np.inf)
    assert signed_rank_test(d).p_value == pytest.approx(ref.pvalue, abs=1e-12)


def test_signed_rank_hand_computed_cases():
    # |d| = 1, 2, 2, 3 all positive: mid-ranks 1, 2.5, 2.5, 4, W+ = 10 is the largest of 16 sign
    # patterns, so P(W+ >= 10) = 1/16 and the two-sided p is 2/16
    t = signed_rank_test([1.0, 2.0, 2.0, 3.0])
    assert (t.n, t.n_nonzero, t.statistic) == (4, 4, 0.0) and t.p_value == pytest.approx(0.125)
    # ranks 1.5, 1.5, 3 with W+ = 3: P(W+ <= 3) = P(W+ >= 3) = 5/8 -> p = 1
    assert signed_rank_test([1.0, 1.0, -2.0]).p_value == pytest.approx(1.0)
    # zeros are dropped; all zero: no test
    t = signed_rank_test([0.0, 0.0, 0.5])
    assert (t.n, t.n_nonzero) == (3, 1) and t.p_value == pytest.approx(1.0) and t.min_p == 1.0
    t = signed_rank_test([0.0, 0.0])
    assert t.n_nonzero == 0 and math.isnan(t.p_value)
    with pytest.raises(ValueError, match="n = 21"):
        signed_rank_test(np.arange(1.0, 22.0))


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, float("nan")])[1]) and holm([0.01, float("nan")])[0] == pytest.approx(0.01)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def _grid(fn, folds=5, seeds=3):
    return {(f, s): fn(f, s) for f in range(folds) for s in range(seeds)}


def test_fold_means_average_seeds_before_pairing():
    scores = {(0, 0): 0.2, (0, 1): 0.4, (1, 0): 0.9, (1, 1): float("nan")}
    assert fold_means(scores) == pytest.approx({0: 0.3, 1: 0.9})
    # 5 folds x 3 seeds are 5 test sets: the test runs on 5 fold means, not 15 pairs
    c = compare(_grid(lambda f, s: 0.5 + 0.1 * f + 0.01 * s), _grid(lambda f, s: 0.4 + 0.01 * f))
    assert (c.n_folds, c.n_seeds, c.test.n) == (5, 3, 5)
    assert c.mean_diff == pytest.approx(np.mean([0.1 + 0.09 * f + 0.01 for f in range(5)]))
    assert c.test.p_value == pytest.approx(0.0625) and not c.tested
    assert "0.0625 > 0.05" in c.note and format_p(c) == "n/a (min p 0.0625)"
    assert format_diff(c).startswith(f"{c.mean_diff:+.3f} [")


def test_degenerate_comparisons_say_why_there_is_no_p():
    same = _grid(lambda f, s: 0.3 + 0.05 * f)
    c = compare(same, dict(same))
    assert c.mean_diff == 0.0 and c.ci == (0.0, 0.0) and math.isnan(c.test.p_value)
    assert "all 5 fold differences are zero" in c.note and format_p(c) == "n/a"
    one = compare({(0, 0): 0.9, (0, 1): 0.7}, {(0, 0): 0.1, (0, 1): 0.3})  # n = 1 test set
    assert one.n_folds == 1 and one.mean_diff == pytest.approx(0.6) and "one test set" in one.note
    assert one.ci[0] == pytest.approx(0.4) and one.ci[1] == pytest.approx(0.8)  # seed variation only
    single = compare({(0, 0): 0.9}, {(0, 0): 0.1})
    assert single.ci == pytest.approx((0.8, 0.8)) and not single.tested and format_p(single) == "n/a"
    assert compare({}, {}).note == "no common test folds"
    with pytest.raises(TypeError, match="mapping"):
        compare([0.1], {(0, 0): 0.1})


def test_hierarchical_bootstrap_matches_scipy_with_one_seed_per_fold():
    values = [0.1, 0.35, 0.2, 0.6, 0.45, 0.3, 0.5]
    ours = hierarchical_bootstrap_ci({(f, 0): v for f, v in enumerate(values)}, resamples=20_000)
    ref = scipy_stats.bootstrap((np.array(values),), np.mean, n_resamples=20_000, method="percentile",
                                random_state=np.random.default_rng(1)).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.015)


def test_hierarchical_bootstrap_widens_with_seed_noise_and_stays_in_range():
    folds = {f: 0.1 * f for f in range(5)}
    tight = hierarchical_bootstrap_ci({(f, s): v for f, v in folds.items() for s in range(3)})
    noisy = hierarchical_bootstrap_ci({(f, s): v + (0.3 if s == 0 else -0.15) for f, v in folds.items()
                                       for s in range(3)})
    assert 0.0 <= tight[0] < 0.2 < tight[1] <= 0.4
    assert noisy[1] - noisy[0] > tight[1] - tight[0]
    assert hierarchical_bootstrap_ci({}) != hierarchical_bootstrap_ci({})  # (nan, nan)


def test_compare_study_holm_corrects_only_tests_that_can_reach_significance():
    base = _grid(lambda f, s: 0.5, folds=7, seeds=1)
    methods = {"base": base,
               "up": _grid(lambda f, s: 0.6 + 0.01 * f, folds=7, seeds=1),       # 7/7 folds better: p = 2/128
               "down": _grid(lambda f, s: 0.45 - 0.01 * f, folds=7, seeds=1),
               "same": dict(base)}
    out = compare_study(methods, "base")
    assert set(out) == {"up", "down", "same"}
    assert out["up"].test.p_value == pytest.approx(2 / 128) and out["up"].tested
    assert out["up"].p_holm == pytest.approx(2 * 2 / 128) and out["down"].p_holm == pytest.approx(2 * 2 / 128)
    assert math.isnan(out["same"].p_holm) and format_p(out["up"]) == f"{4 / 128:.3g}"
    with pytest.raises(ValueError, match="baseline"):
        compare_study(methods, "missing")
