"""Statistics of the studies, with the outer test fold as the unit.

A study scores every method on the same outer test folds of a nested cross-validation
(the split does not depend on the training seed), each fold with several training seeds.
The runs of one fold share their test cases, so they are not independent pairs:

1. within a fold, the seeds are averaged (:func:`fold_means`);
2. a method is compared with the baseline by the paired differences of these fold means,
   two-sided exact Wilcoxon signed-rank test over the folds (:func:`signed_rank_test`);
3. the effect size is the mean difference with a hierarchical bootstrap 95 % CI that
   resamples folds and, within each drawn fold, seeds (:func:`hierarchical_bootstrap_ci`);
4. the p-values of the variants of one study are Holm-corrected together (:func:`holm`).

With n folds whose differences are all non-zero the smallest two-sided p is 2 / 2**n
(0.0625 for 5 folds): when that cannot go below 0.05 no p-value is given, only the CI,
and the note says why.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

Key = tuple[int, int]  # (fold, seed)
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class SignedRankTest:
    """Two-sided Wilcoxon signed-rank test of paired differences (zero differences dropped).

    ``n``: usable pairs; ``n_nonzero``: pairs with a non-zero difference; ``statistic``:
    min(W+, W-) as scipy reports it; ``p_value``: exact two-sided p (NaN when there is no
    test); ``min_p``: the smallest p that ``n_nonzero`` pairs can give.
    """

    n: int
    n_nonzero: int
    statistic: float
    p_value: float
    min_p: float


@dataclass(frozen=True)
class Comparison:
    """A method against the study's baseline over the outer test folds.

    ``mean_diff``: mean over folds of (method − baseline) fold means; ``ci``: hierarchical
    (fold, seed) bootstrap 95 % CI of that mean; ``test``: Wilcoxon over the folds;
    ``p_holm``: Holm-adjusted p within the study (NaN when not tested); ``note``: why a
    p-value is missing or what to keep in mind ("" otherwise).
    """

    n_folds: int
    n_seeds: int
    mean_diff: float
    ci: tuple[float, float]
    test: SignedRankTest
    p_holm: float = float("nan")
    note: str = ""

    @property
    def tested(self) -> bool:
        return math.isfinite(self.test.p_value) and self.test.min_p <= ALPHA


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of the finite values; (nan, nan) when there are none."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if not arr.size:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def fold_means(scores: Mapping[Key, float]) -> dict[int, float]:
    """{fold: mean over that fold's seeds of the finite scores} from {(fold, seed): score}."""
    per_fold: dict[int, list[float]] = {}
    for (fold, _seed), value in scores.items():
        if value is not None and math.isfinite(float(value)):
            per_fold.setdefault(int(fold), []).append(float(value))
    return {f: float(np.mean(v)) for f, v in sorted(per_fold.items())}


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mid-rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def signed_rank_test(diffs: Sequence[float]) -> SignedRankTest:
    """Exact two-sided Wilcoxon signed-rank test of ``diffs`` (method − baseline, one per test set).

    Zero differences are dropped (``zero_method="wilcox"``); ties among |d| get mid-ranks
    and the null distribution is enumerated over all 2**n sign patterns of those ranks,
    so it stays exact with ties. p = min(1, 2·min(P(W+ ≤ w), P(W+ ≥ w))), as scipy's
    exact method. No test (p = NaN) with no non-zero difference; n > 20 is refused
    (folds, not cases, are the unit here).
    """
    d = np.asarray([float(v) for v in diffs if math.isfinite(float(v))], dtype=np.float64)
    nz = d[d != 0]
    n = int(nz.size)
    min_p = min(1.0, 2.0 / 2 ** n) if n else 1.0
    if n == 0:
        return SignedRankTest(int(d.size), 0, float("nan"), float("nan"), min_p)
    if n > 20:
        raise ValueError(f"diffs: the exact test enumerates 2**n sign patterns; got n = {n} > 20")
    ranks = _ranks(np.abs(nz))
    w_plus = float(ranks[nz > 0].sum())
    signs = np.array(list(itertools.product((0.0, 1.0), repeat=n)))
    null = signs @ ranks
    eps = 1e-9 * max(1.0, float(ranks.sum()))
    lower, upper = float(np.mean(null <= w_plus + eps)), float(np.mean(null >= w_plus - eps))
    p = min(1.0, 2.0 * min(lower, upper))
    statistic = min(w_plus, float(ranks.sum()) - w_plus)
    return SignedRankTest(int(d.size), n, statistic, p, min_p)


def hierarchical_bootstrap_ci(diffs: Mapping[Key, float], resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean paired difference, resampling folds, then seeds within a fold.

    Args:
        diffs: {(fold, seed): method − baseline} (finite values only are used).
    Each resample draws as many folds as there are, with replacement, and within each drawn
    fold as many of its seeds, with replacement; the statistic is the mean over drawn folds
    of the mean over drawn seeds (the estimate :func:`fold_means` then averaging gives).
    One fold: the interval reflects seed variation only; one fold and one seed: (d, d).
    """
    groups = [np.asarray(v, dtype=np.float64) for v in _by_fold(diffs).values()]
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n_f = len(groups)
    width = max(len(g) for g in groups)
    # a ragged fold x seed table, padded with NaN; a draw of seed j in fold f picks among its own seeds
    table = np.full((n_f, width), np.nan)
    counts = np.array([len(g) for g in groups])
    for i, g in enumerate(groups):
        table[i, :len(g)] = g
    fold_draw = rng.integers(0, n_f, size=(resamples, n_f))
    seed_draw = (rng.random(size=(resamples, n_f, width)) * counts[fold_draw][..., None]).astype(np.int64)
    valid = np.arange(width)[None, None, :] < counts[fold_draw][..., None]
    picked = np.where(valid, table[fold_draw[..., None], seed_draw], 0.0)
    per_fold = picked.sum(axis=2) / counts[fold_draw]
    means = per_fold.mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _by_fold(scores: Mapping[Key, float]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for (fold, seed), value in sorted(scores.items()):
        if value is not None and math.isfinite(float(value)):
            out.setdefault(int(fold), []).append(float(value))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def compare(method: Mapping[Key, float], baseline: Mapping[Key, float]) -> Comparison:
    """One method against the baseline: pairs are (fold, seed) runs present in both.

    Args:
        method, baseline: {(fold, seed): score on that outer fold's test cases}.
    """
    for name, value in (("method", method), ("baseline", baseline)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping {{(fold, seed): score}}, got {type(value).__name__}")
    keys = sorted(k for k in set(method) & set(baseline)
                  if math.isfinite(float(method[k])) and math.isfinite(float(baseline[k])))
    diffs = {k: float(method[k]) - float(baseline[k]) for k in keys}
    per_fold = fold_means(diffs)
    n_folds = len(per_fold)
    n_seeds = max((len(v) for v in _by_fold(diffs).values()), default=0)
    test = signed_rank_test(list(per_fold.values()))
    mean = float(np.mean(list(per_fold.values()))) if per_fold else float("nan")
    return Comparison(n_folds, n_seeds, mean, hierarchical_bootstrap_ci(diffs), test,
                      note=_note(n_folds, test))


def _note(n_folds: int, test: SignedRankTest) -> str:
    if n_folds == 0:
        return "no common test folds"
    if n_folds == 1:
        return "one test set: no test; the CI reflects seed variation only"
    if test.n_nonzero == 0:
        return f"all {n_folds} fold differences are zero: no test"
    if test.min_p > ALPHA:
        return (f"{test.n_nonzero} test set(s) with a difference: the smallest possible two-sided p is "
                f"{test.min_p:.3g} > {ALPHA}, so no p-value; see the CI")
    return ""


def compare_study(methods: Mapping[str, Mapping[Key, float]], baseline: str) -> dict[str, Comparison]:
    """Every method of one study against ``baseline``, Holm-corrected across the study.

    Only comparisons whose test can reach significance (:attr:`Comparison.tested`) enter the
    correction; the others keep p_holm = NaN and their note.
    """
    if baseline not in methods:
        raise ValueError(f"baseline: {baseline!r} is not one of the methods {sorted(methods)}")
    raw = {name: compare(scores, methods[baseline]) for name, scores in methods.items() if name != baseline}
    tested = [name for name, c in raw.items() if c.tested]
    adjusted = dict(zip(tested, holm([raw[n].test.p_value for n in tested])))
    return {name: Comparison(c.n_folds, c.n_seeds, c.mean_diff, c.ci, c.test,
                             adjusted.get(name, float("nan")), c.note) for name, c in raw.items()}


def format_diff(c: Comparison) -> str:
    """'+0.052 [+0.031, +0.070]': mean difference and its 95 % CI."""
    if not math.isfinite(c.mean_diff):
        return "—"
    return f"{c.mean_diff:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}]"


def format_p(c: Comparison) -> str:
    """Holm-adjusted p for tables, or 'n/a' with the reason in short."""
    if c.tested:
        return f"{c.p_holm:.3g}"
    if c.n_folds >= 2 and c.test.n_nonzero and c.test.min_p > ALPHA:
        return f"n/a (min p {c.test.min_p:.3g})"
    return "n/a"
