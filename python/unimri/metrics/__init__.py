"""Segmentation metrics: overlap scores from confusion counts, surface distances and a
MONAI-style cumulative object.

IoU = TP/(TP+FP+FN) and DSC = 2TP/(2TP+FP+FN) are the standard definitions. The paper's
eq. 13 and 14 swap them (IoU is given the Dice formula); unimri does not follow that.
"""
from .confusion import (
    CONFUSION_METRICS,
    COUNT_FIELDS,
    compute_dice,
    compute_iou,
    compute_precision,
    compute_recall,
    compute_specificity,
    confusion_counts,
    metric_from_counts,
)
from .cumulative import METRIC_NAMES, SURFACE_METRICS, SegmentationMetrics
from .surface import average_surface_distance, hausdorff_distance_95, surface_distances

__all__ = [
    "CONFUSION_METRICS",
    "COUNT_FIELDS",
    "METRIC_NAMES",
    "SURFACE_METRICS",
    "SegmentationMetrics",
    "average_surface_distance",
    "compute_dice",
    "compute_iou",
    "compute_precision",
    "compute_recall",
    "compute_specificity",
    "confusion_counts",
    "hausdorff_distance_95",
    "metric_from_counts",
    "surface_distances",
]
