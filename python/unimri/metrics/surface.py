"""Surface-distance metrics: 95th-percentile Hausdorff distance and average surface distance.

The surface of a mask is its set of boundary voxels: the mask minus its binary erosion
(scipy's default cross-shaped structuring element, outside the image counts as
background). Distances are Euclidean in physical units given the voxel ``spacing``,
from each surface voxel of one mask to the nearest surface voxel of the other, via
``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``. This is MONAI's
definition (``compute_hausdorff_distance``, ``compute_average_surface_distance``).

Empty masks (per case and class): both empty -> NaN; exactly one empty -> +inf.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ._inputs import drop_background, to_one_hot_pair


def _check_spacing(spacing: float | Sequence[float] | None, spatial_dims: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * spatial_dims
    if isinstance(spacing, (int, float)):
        values = (float(spacing),) * spatial_dims
    else:
        values = tuple(float(s) for s in spacing)
    if len(values) != spatial_dims:
        raise ValueError(f"spacing must have {spatial_dims} entries (one per spatial dim), got {len(values)}: {values}")
    if any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"spacing entries must be finite and > 0, got {values}")
    return values


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a bool mask (*S) -> bool (*S)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (pred -> target, target -> pred) of two bool masks (*S).

    Returns two float64 1-D arrays (one entry per surface voxel of the source mask);
    a distance to an empty mask is +inf.
    """
    pred_surface, target_surface = mask_surface(pred), mask_surface(target)

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0, dtype=np.float64)
        if not dst.any():
            return np.full(int(src.sum()), np.inf)
        field = ndimage.distance_transform_edt(~dst, sampling=spacing)
        return field[src].astype(np.float64)

    return directed(pred_surface, target_surface), directed(target_surface, pred_surface)


def _per_case_class(y_pred, y, num_classes, include_background, spacing, reduce) -> torch.Tensor:
    p, t = to_one_hot_pair(y_pred, y, num_classes)
    p, t = drop_background(p, t, include_background)
    spatial_dims = p.dim() - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"surface metrics need 2D or 3D masks (B, C, *S), got shape {tuple(p.shape)}")
    sampling = _check_spacing(spacing, spatial_dims)
    p_np, t_np = p.cpu().numpy(), t.cpu().numpy()
    out = torch.empty(p.shape[:2], dtype=torch.float64)
    for b, c in np.ndindex(*p.shape[:2]):
        pred_mask, target_mask = p_np[b, c], t_np[b, c]
        if not pred_mask.any() and not target_mask.any():
            out[b, c] = float("nan")
        elif not pred_mask.any() or not target_mask.any():
            out[b, c] = float("inf")
        else:
            out[b, c] = reduce(*surface_distances(pred_mask, target_mask, sampling))
    return out


def hausdorff_distance_95(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int | None = None,
    include_background: bool = False,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 95.0,
) -> torch.Tensor:
    """Percentile Hausdorff distance per case and class: float64 (B, C) (C - 1 without background).

    ``max(q(d(pred -> target)), q(d(target -> pred)))`` with ``q`` the ``percentile``
    (linear interpolation, as ``numpy.percentile``); ``percentile=100`` is the classic
    Hausdorff distance. Inputs as :func:`unimri.metrics.confusion_counts`; ``spacing`` is
    one number or one per spatial dim (physical units per voxel, default 1).
    """
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")

    def reduce(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
        return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))

    return _per_case_class(y_pred, y, num_classes, include_background, spacing, reduce)


def average_surface_distance(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int | None = None,
    include_background: bool = False,
    spacing: float | Sequence[float] | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Average surface distance per case and class: float64 (B, C).

    ``symmetric=True``: mean over both directed distance sets pooled together (MONAI's
    ``symmetric=True``); otherwise the mean of the pred -> target distances.
    """

    def reduce(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
        pooled = np.concatenate([d_pt, d_tp]) if symmetric else d_pt
        return float(pooled.mean())

    return _per_case_class(y_pred, y, num_classes, include_background, spacing, reduce)
