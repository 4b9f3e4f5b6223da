"""Intensity normalisation and label-preserving augmentation (2D and 3D, torch on CPU)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume

NORMALIZE_MODES = ("zscore", "zscore-all", "zscore-nonzero", "none")


def zscore_stats(case: Volume, mode: str = "zscore") -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-channel mean and std of one case for z-score normalisation.

    ``mode``: "zscore" masks to non-zero voxels for MR cases (``meta["modality"] == "MR"``)
    and uses every voxel otherwise; "zscore-nonzero" always masks; "zscore-all" never does.

    Returns:
        (mean (C,), std (C,), masked): ``masked`` says zero voxels must stay zero.
    """
    if mode not in NORMALIZE_MODES or mode == "none":
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES[:-1]} here, got {mode!r}")
    masked = mode == "zscore-nonzero" or (mode == "zscore" and case.meta.get("modality") == "MR")
    means, stds = [], []
    for channel in case.image:
        values = channel[channel != 0] if masked else channel.ravel()
        if values.size == 0:
            values = channel.ravel()
        means.append(float(values.mean(dtype=np.float64)))
        stds.append(float(values.std(dtype=np.float64)))
    std = np.maximum(np.asarray(stds, np.float32), 1e-6)
    return np.asarray(means, np.float32), std, masked


def apply_zscore(image: np.ndarray, mean: np.ndarray, std: np.ndarray, masked: bool) -> np.ndarray:
    """(image - mean) / std per channel; image (C, *S); zero voxels stay zero if ``masked``."""
    shape = (-1,) + (1,) * (image.ndim - 1)
    out = (image - mean.reshape(shape)) / std.reshape(shape)
    if masked:
        out = np.where(image != 0, out, 0.0)
    return out.astype(np.float32, copy=False)


@dataclass
class Augmentation:
    """Random augmentation applied identically to image and label.

    Attributes:
        flip_prob: probability of flipping each spatial axis.
        rot90_prob: probability of a random 90-degree rotation in a random plane (only
            planes whose two sizes are equal, so batch shapes never change).
        affine_prob: probability of a small affine warp: rotation up to
            ``max_rotation_deg``, isotropic scale within ``scale_range``, shift up to
            ``max_shift`` (fraction of the size). Image bilinear, label nearest.
        intensity_prob: probability of ``image * s + b``, s in ``scale_intensity``,
            b in ``shift_intensity`` (after normalisation, so b is in std units).
    """

    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    affine_prob: float = 0.3
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.05
    intensity_prob: float = 0.5
    scale_intensity: tuple[float, float] = (0.9, 1.1)
    shift_intensity: tuple[float, float] = (-0.1, 0.1)

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment image (C, *S) float and label (*S) int64; returns new tensors."""
        dims = label.ndim
        for axis in range(dims):
            if rng.random() < self.flip_prob:
                image, label = image.flip(axis + 1), label.flip(axis)
        if rng.random() < self.rot90_prob:
            planes = [(a, b) for a in range(dims) for b in range(a + 1, dims)
                      if label.shape[a] == label.shape[b]]
            if planes:
                a, b = planes[int(rng.integers(len(planes)))]
                k = int(rng.integers(1, 4))
                image, label = image.rot90(k, (a + 1, b + 1)), label.rot90(k, (a, b))
        if rng.random() < self.affine_prob:
            image, label = self._affine(image, label, rng)
        if rng.random() < self.intensity_prob:
            scale = rng.uniform(*self.scale_intensity)
            shift = rng.uniform(*self.shift_intensity)
            image = image * float(scale) + float(shift)
        return image.contiguous(), label.contiguous()

    def _affine(self, image: torch.Tensor, label: torch.Tensor,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        dims = label.ndim
        rot = np.eye(dims)
        for a in range(dims):
            for b in range(a + 1, dims):
                t = math.radians(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
                plane = np.eye(dims)
                plane[a, a] = plane[b, b] = math.cos(t)
                plane[a, b], plane[b, a] = -math.sin(t), math.sin(t)
                rot = rot @ plane
        matrix = rot / rng.uniform(*self.scale_range)
        shift = rng.uniform(-2 * self.max_shift, 2 * self.max_shift, dims)  # grid spans 2 units
        # affine_grid's coordinates are ordered (x, y, z) = reversed tensor axes.
        theta = np.concatenate([matrix[::-1, ::-1], shift[::-1, None]], axis=1)
        grid = _affine_grid(theta, tuple(label.shape))
        warped = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border",
                               align_corners=False)[0].to(image.dtype)
        lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[0, 0].long()  # nearest: exact integers
        return warped, lab


def _affine_grid(theta: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """``F.affine_grid(theta[None], (1, 1, *shape), align_corners=False)`` computed in numpy.

    Same values; built here because ``affine_grid`` runs a batched matmul that is slow on
    small grids when CPU threads are contended (tens of ms instead of well under one).
    """
    axes = [(2 * np.arange(n, dtype=np.float32) + 1) / n - 1 for n in shape]
    mesh = np.meshgrid(*axes, indexing="ij")
    base = np.stack(list(mesh[::-1]) + [np.ones_like(mesh[0])], axis=-1)  # (*shape, dims + 1) as (x, y[, z], 1)
    return torch.from_numpy((base @ theta.T.astype(np.float32))[None])


def resolve_augmentation(augment: bool | Augmentation | None) -> Augmentation | None:
    """``True`` -> default :class:`Augmentation`; ``False``/``None`` -> no augmentation."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return Augmentation()
    if isinstance(augment, Augmentation):
        return augment
    raise TypeError(f"augment must be a bool or an Augmentation, got {type(augment).__name__}")


_PROFILE_SAMPLES = 200_000


def _channel_values(channel: np.ndarray, masked: bool, limit: int = _PROFILE_SAMPLES) -> np.ndarray:
    """A deterministic subsample (every k-th voxel, about ``limit``) of a channel's finite values."""
    values = channel.ravel()
    if masked and np.any(values != 0):
        values = values[values != 0]
    values = values[np.isfinite(values)]
    step = max(1, values.size // max(1, limit))
    return values[::step].astype(np.float64, copy=False)


def intensity_percentiles(image: np.ndarray, masked: bool) -> list[list[float]]:
    """Per channel [p1, p50, p99] of an image (C, *S) (non-zero voxels only if ``masked``)."""
    out = []
    for channel in np.asarray(image):
        values = _channel_values(channel, masked)
        out.append([float(v) for v in np.percentile(values, [1, 50, 99])] if values.size else [0.0] * 3)
    return out


def intensity_profile(cases: Sequence[Volume], mode: str = "zscore") -> dict:
    """The raw intensity range a model was trained on, stored in its checkpoint.

    Returns {"modality": common ``meta["modality"]`` or None, "masked": whether zero
    voxels were left out (as the z-score of MR cases does), "percentiles": per channel
    [p1, p50, p99] of the pooled (sub-sampled) voxels of all ``cases``}.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("cases: expected at least one case for the intensity profile, got none")
    modalities = {c.meta.get("modality") for c in cases}
    modality = modalities.pop() if len(modalities) == 1 else None
    masked = mode == "zscore-nonzero" or (mode == "zscore" and modality == "MR")
    limit = max(1000, 10 * _PROFILE_SAMPLES // len(cases))  # bounded memory for large datasets
    pooled = [np.concatenate([_channel_values(c.image[k], masked, limit) for c in cases])
              for k in range(cases[0].num_channels)]
    percentiles = [[float(v) for v in np.percentile(p, [1, 50, 99])] if p.size else [0.0] * 3 for p in pooled]
    return {"modality": modality, "masked": masked, "percentiles": percentiles}


def intensity_mismatch(profile: dict | None, image: np.ndarray, where: str) -> str | None:
    """A warning text when ``image`` (C, *S) lies far outside the training ``profile``, else None.

    Far outside: for some channel, the image's median is outside the training [p1, p99]
    range, or the two [p1, p99] ranges overlap on less than half of their union (e.g. CT
    in Hounsfield units given to a model trained on MR).
    """
    if not profile or not profile.get("percentiles"):
        return None
    found = intensity_percentiles(image, bool(profile.get("masked")))
    for k, ((t1, _, t99), (i1, i50, i99)) in enumerate(zip(profile["percentiles"], found)):
        overlap = max(0.0, min(t99, i99) - max(t1, i1))
        union = max(t99, i99) - min(t1, i1)
        if not t1 <= i50 <= t99 or (union > 0 and overlap < 0.5 * union):
            modality = profile.get("modality")
            return (f"{where}: intensities of channel {k} (1st-99th percentile {i1:.4g} .. {i99:.4g}, "
                    f"median {i50:.4g}) lie far outside those the model was trained on ({t1:.4g} .. {t99:.4g}"
                    f"{', modality ' + modality if modality else ''}); a different modality or contrast "
                    f"gives unreliable predictions")
    return None
