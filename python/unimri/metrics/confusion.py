"""Overlap metrics from a confusion matrix: IoU, DSC, precision, recall, specificity.

Definitions (standard; the paper's eq. 13 and 14 swap IoU and DSC, giving IoU the Dice
formula — unimri uses the standard ones, so DSC = 2·IoU / (1 + IoU) for any prediction):

* IoU (Jaccard)       = TP / (TP + FP + FN)
* DSC (Dice)          = 2·TP / (2·TP + FP + FN)
* precision           = TP / (TP + FP)
* recall (sensitivity)= TP / (TP + FN)
* specificity         = TN / (TN + FP)

Empty cases, per (case, class):

* ``ignore_empty=True`` (default, as MONAI): a class absent from the target scores NaN,
  so the case does not count in that class's mean (use ``nanmean``).
* Otherwise, and whenever a denominator is zero, the score is 1.0 if the prediction
  matches the target for that class exactly (FP = FN = 0) and 0.0 if it does not. This
  agrees with MONAI's ``ignore_empty=False`` for Dice and IoU (both empty -> 1).
"""
from __future__ import annotations

from typing import Callable

import torch

from ._inputs import drop_background, to_one_hot_pair

COUNT_FIELDS = ("tp", "fp", "tn", "fn")
CONFUSION_METRICS = ("iou", "dice", "precision", "recall", "specificity")


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """Per-case, per-class confusion counts.

    Args:
        pred: label map (B, *S) / (B, 1, *S) or one-hot (B, C, *S) bool/float.
        target: same conventions as ``pred``.
        num_classes: number of classes C (needed when both are label maps).

    Returns:
        int64 tensor (B, C, 4) holding TP, FP, TN, FN (MONAI's order) over the spatial axes.
    """
    p, t = to_one_hot_pair(pred, target, num_classes)
    p, t = p.flatten(2), t.flatten(2)
    tp = (p & t).sum(-1)
    fp = (p & ~t).sum(-1)
    fn = (~p & t).sum(-1)
    tn = p.shape[-1] - tp - fp - fn
    return torch.stack([tp, fp, tn, fn], dim=-1).long()


def _safe_ratio(num: torch.Tensor, den: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """num / den, with 1.0 (exact match) or 0.0 where den == 0."""
    fallback = exact.to(num.dtype)
    return torch.where(den > 0, num / den.clamp_min(1), fallback)


def _parts(counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    c = counts.double()
    return c[..., 0], c[..., 1], c[..., 2], c[..., 3]


def _iou(tp, fp, tn, fn):
    return tp, tp + fp + fn


def _dice(tp, fp, tn, fn):
    return 2 * tp, 2 * tp + fp + fn


def _precision(tp, fp, tn, fn):
    return tp, tp + fp


def _recall(tp, fp, tn, fn):
    return tp, tp + fn


def _specificity(tp, fp, tn, fn):
    return tn, tn + fp


_FORMULAS: dict[str, Callable] = {
    "iou": _iou,
    "dice": _dice,
    "precision": _precision,
    "recall": _recall,
    "specificity": _specificity,
}


def metric_from_counts(name: str, counts: torch.Tensor, ignore_empty: bool = True) -> torch.Tensor:
    """One metric from confusion counts of any leading shape (..., 4) -> float64 (...).

    ``ignore_empty``: NaN where the target holds no positive (TP + FN == 0).
    """
    if name not in _FORMULAS:
        raise ValueError(f"metric name must be one of {CONFUSION_METRICS}, got {name!r}")
    if counts.shape[-1] != 4:
        raise ValueError(f"counts must end in a dim of 4 (TP, FP, TN, FN), got shape {tuple(counts.shape)}")
    tp, fp, tn, fn = _parts(counts)
    num, den = _FORMULAS[name](tp, fp, tn, fn)
    score = _safe_ratio(num, den, (fp == 0) & (fn == 0))
    if ignore_empty:
        score = torch.where(tp + fn > 0, score, torch.full_like(score, float("nan")))
    return score


def _compute(name: str, y_pred, y, num_classes, include_background, ignore_empty) -> torch.Tensor:
    p, t = to_one_hot_pair(y_pred, y, num_classes)
    p, t = drop_background(p, t, include_background)
    return metric_from_counts(name, confusion_counts(p, t), ignore_empty)


def compute_iou(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                include_background: bool = True, ignore_empty: bool = True) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per case and class: float64 (B, C) (C - 1 without background).

    Inputs as :func:`confusion_counts`; argument names and defaults follow MONAI's ``compute_iou``.
    """
    return _compute("iou", y_pred, y, num_classes, include_background, ignore_empty)


def compute_dice(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                 include_background: bool = True, ignore_empty: bool = True) -> torch.Tensor:
    """DSC = 2·TP / (2·TP + FP + FN) per case and class: float64 (B, C) (C - 1 without background)."""
    return _compute("dice", y_pred, y, num_classes, include_background, ignore_empty)


def compute_precision(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                      include_background: bool = True, ignore_empty: bool = True) -> torch.Tensor:
    """Precision = TP / (TP + FP) per case and class: float64 (B, C); 0 when nothing is predicted but the target is not empty."""
    return _compute("precision", y_pred, y, num_classes, include_background, ignore_empty)


def compute_recall(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                   include_background: bool = True, ignore_empty: bool = True) -> torch.Tensor:
    """Recall (sensitivity) = TP / (TP + FN) per case and class: float64 (B, C)."""
    return _compute("recall", y_pred, y, num_classes, include_background, ignore_empty)


def compute_specificity(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                        include_background: bool = True, ignore_empty: bool = True) -> torch.Tensor:
    """Specificity = TN / (TN + FP) per case and class: float64 (B, C)."""
    return _compute("specificity", y_pred, y, num_classes, include_background, ignore_empty)
