"""Statistics for the ablation studies: mean ± std over (seed, fold) runs and a paired
Wilcoxon signed-rank test of each variant against the baseline.

Pairs are matched on (seed, fold): the same seed gives the same k-fold split, so the
variant and the baseline were scored on the same validation cases. Degenerate cases
are reported, not hidden: fewer than two usable pairs gives no p-value, and pairs that
are all equal give p = 1 (no evidence of a difference), each with a ``note`` saying so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

Key = tuple[int, int]  # (seed, fold)


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_wilcoxon`.

    ``n_pairs``: pairs with both values finite; ``median_diff``: median of variant −
    baseline; ``statistic``/``p_value``: scipy's two-sided signed-rank test (NaN when
    there is no test); ``note``: "" or why the test is degenerate.
    """

    n_pairs: int
    median_diff: float
    statistic: float
    p_value: float
    note: str = ""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of the finite values; (nan, nan) when there are none."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if not arr.size:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def pair_up(variant: Mapping[Key, float], baseline: Mapping[Key, float]) -> tuple[list[Key], np.ndarray, np.ndarray]:
    """Keys present in both with finite values on both sides, sorted; and the two value arrays."""
    if not isinstance(variant, Mapping) or not isinstance(baseline, Mapping):
        raise TypeError("variant and baseline must be mappings {(seed, fold): value}, got "
                        f"{type(variant).__name__} and {type(baseline).__name__}")
    keys = sorted(k for k in set(variant) & set(baseline)
                  if math.isfinite(float(variant[k])) and math.isfinite(float(baseline[k])))
    return keys, np.array([variant[k] for k in keys], np.float64), np.array([baseline[k] for k in keys], np.float64)


def paired_wilcoxon(variant: Mapping[Key, float], baseline: Mapping[Key, float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``variant`` vs ``baseline`` over matched keys.

    Args:
        variant, baseline: {(seed, fold): metric}. Only keys in both, with finite values,
            are used.

    Zero differences are dropped (scipy's ``zero_method="wilcox"``), as the classic test
    does; if every difference is zero the result is p = 1 with a note, and with fewer than
    two usable pairs (or fewer than one non-zero difference) there is no test (p = NaN).
    With n non-zero differences the smallest attainable two-sided p is 2 / 2**n (0.25
    for n = 3), which the note states when the test cannot reach 0.05.
    """
    keys, v, b = pair_up(variant, baseline)
    n = len(keys)
    if n < 2:
        return PairedTest(n, float(np.median(v - b)) if n else float("nan"), float("nan"), float("nan"),
                          f"too few pairs ({n}) for a test")
    diff = v - b
    median = float(np.median(diff))
    nonzero = int(np.count_nonzero(diff))
    if nonzero == 0:
        return PairedTest(n, median, 0.0, 1.0, "all pairs equal")
    from scipy.stats import wilcoxon

    res = wilcoxon(v, b, zero_method="wilcox", alternative="two-sided")
    note = ""
    floor = 2.0 / 2 ** nonzero
    if floor > 0.05:
        note = f"{nonzero} non-zero difference(s): p cannot go below {floor:.3g}"
    if nonzero < n:
        note = (note + "; " if note else "") + f"{n - nonzero} tie(s) dropped"
    return PairedTest(n, median, float(res.statistic), float(res.pvalue), note)


def format_p(test: PairedTest) -> str:
    """'p = 0.031 (n = 9)' style text for tables; '—' when there is no test."""
    if not math.isfinite(test.p_value):
        return f"— (n = {test.n_pairs})"
    return f"{test.p_value:.3g} (n = {test.n_pairs})"
