"""Resampling to a new voxel spacing, keeping the field of view and the world geometry."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume


def resample_array(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample the trailing ``len(shape)`` axes of ``array`` to ``shape``.

    Voxel centres are mapped as with ``align_corners=False`` (the field of view is kept).
    ``order`` 0 = nearest (labels; integer dtype is kept), 1 = linear, 3 = cubic (needs scipy).
    """
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0 (nearest), 1 (linear) or 3 (cubic), got {order!r}")
    shape = tuple(int(s) for s in shape)
    dims = len(shape)
    if dims not in (2, 3) or array.ndim < dims:
        raise ValueError(f"shape must give 2 or 3 sizes for an array with >= that many axes, "
                         f"got shape {shape} for array {array.shape}")
    if tuple(array.shape[-dims:]) == shape:
        return array.copy()
    lead = array.shape[:-dims]
    if order == 3:
        try:
            from scipy import ndimage
        except ImportError as exc:
            raise ImportError("cubic resampling (order=3) needs scipy: pip install scipy") from exc
        factors = [o / n for o, n in zip(array.shape[-dims:], shape)]
        grids = np.meshgrid(*[(np.arange(n) + 0.5) * f - 0.5 for n, f in zip(shape, factors)],
                            indexing="ij")
        flat = array.reshape((-1,) + array.shape[-dims:]).astype(np.float64)
        out = np.stack([ndimage.map_coordinates(ch, grids, order=3, mode="nearest") for ch in flat])
        return out.reshape(lead + shape).astype(array.dtype if array.dtype.kind == "f" else np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array).reshape((1, -1) + array.shape[-dims:]))
    if order == 0:
        out = F.interpolate(tensor.double() if tensor.dtype == torch.int64 else tensor.float(),
                            size=shape, mode="nearest-exact")
        return out.numpy().astype(array.dtype).reshape(lead + shape)
    mode = "bilinear" if dims == 2 else "trilinear"
    out = F.interpolate(tensor.float(), size=shape, mode=mode, align_corners=False)
    return out.numpy().reshape(lead + shape)


def resampled_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Affine of a grid of ``new_shape`` covering the same field of view as ``old_shape``."""
    affine = np.asarray(affine, dtype=np.float64)
    dims = len(old_shape)
    scale = np.asarray(old_shape, np.float64) / np.asarray(new_shape, np.float64)
    index_map = np.eye(4)
    index_map[:dims, :dims] = np.diag(scale)
    index_map[:dims, 3] = (scale - 1) / 2  # new voxel centre i lands on old index (i+0.5)s-0.5
    return affine @ index_map


def resample(volume: Volume, spacing: float | Sequence[float] | None = None,
             shape: Sequence[int] | None = None, order: int = 1) -> Volume:
    """Resample a case to a voxel ``spacing`` (or to a grid ``shape``).

    The image uses interpolation ``order`` (0, 1 or 3); the label always uses nearest
    neighbour and stays int64. The new grid covers the same field of view: the new size
    is ``round(size * old_spacing / spacing)``, so the realised spacing (stored in the
    returned Volume and its affine) can differ slightly from the request when the field
    of view is not a multiple of it.
    """
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a Volume, got {type(volume).__name__}")
    dims = volume.spatial_dims
    old_shape = volume.spatial_shape
    if (spacing is None) == (shape is None):
        raise ValueError("give exactly one of spacing= or shape=")
    if spacing is not None:
        target = (float(spacing),) * dims if np.isscalar(spacing) else tuple(float(s) for s in spacing)
        if len(target) != dims or min(target) <= 0:
            raise ValueError(f"spacing must be positive with {dims} entries, got {spacing!r}")
        new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(old_shape, volume.spacing, target))
    else:
        new_shape = tuple(int(s) for s in shape)
        if len(new_shape) != dims or min(new_shape) < 1:
            raise ValueError(f"shape must give {dims} positive sizes, got {shape!r}")
    affine = resampled_affine(volume.affine, old_shape, new_shape)
    new_spacing = tuple(s * o / n for s, o, n in zip(volume.spacing, old_shape, new_shape))
    image = resample_array(volume.image, new_shape, order)
    label = None if volume.label is None else resample_array(volume.label, new_shape, 0)
    return replace(volume, image=image, label=label, affine=affine, spacing=new_spacing,
                   meta={**volume.meta, "resampled_from": {"shape": old_shape, "spacing": volume.spacing}})
