"""PyTorch datasets over loaded cases: 2D slices (:class:`SliceDataset`) and 3D
volumes or patches (:class:`VolumeDataset`), with foreground-aware sampling."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import Augmentation, NORMALIZE_MODES, apply_zscore, resolve_augmentation, zscore_stats
from .volume import Volume, check_label_values


class _CaseDataset(Dataset):
    """Validation, normalisation statistics and epoch-seeded randomness shared by both datasets."""

    def __init__(self, cases: Sequence[Volume], fg_fraction: float | None, augment: bool | Augmentation,
                 normalize: str | None, seed: int, num_classes: int | None,
                 fg_classes: Sequence[int] | None):
        cases = list(cases)
        if not cases:
            raise ValueError("cases must hold at least one Volume, got an empty sequence")
        for c in cases:
            if not isinstance(c, Volume):
                raise TypeError(f"cases must be Volume objects, got {type(c).__name__}")
            if c.label is None:
                raise ValueError(f"case {c.case_id!r} has no label; training datasets need labels")
            if num_classes is not None:
                check_label_values(c.label, num_classes, f"case {c.case_id!r}")
        channels = {c.num_channels for c in cases}
        if len(channels) != 1:
            raise ValueError(f"cases must all have the same number of channels, got {sorted(channels)}")
        if fg_fraction is not None and not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1] or None, got {fg_fraction!r}")
        normalize = "none" if normalize is None else normalize
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES} or None, got {normalize!r}")
        self.cases = cases
        self.fg_fraction = fg_fraction
        self.augmentation = resolve_augmentation(augment)
        self.normalize = normalize
        self.seed = int(seed)
        self.num_classes = num_classes
        self.fg_classes = None if fg_classes is None else np.asarray(list(fg_classes), np.int64)
        self.epoch = 0
        self._stats = [None if normalize == "none" else zscore_stats(c, normalize) for c in cases]

    def set_epoch(self, epoch: int) -> None:
        """Change the random draw (sampling and augmentation) for a new epoch."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _foreground(self, label: np.ndarray) -> np.ndarray:
        """Boolean mask of the minority (foreground) classes: non-zero, or ``fg_classes``."""
        return label != 0 if self.fg_classes is None else np.isin(label, self.fg_classes)

    def _finish(self, case_index: int, image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                pad: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise, zero-pad (after normalisation), convert to tensors and augment."""
        stats = self._stats[case_index]
        if stats is not None:
            image = apply_zscore(image, *stats)
        if pad is not None and any(b for _, b in pad):
            image, label = np.pad(image, [(0, 0)] + pad), np.pad(label, pad)
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        label_t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        if self.augmentation is not None:
            image_t, label_t = self.augmentation(image_t, label_t, rng)
        return image_t, label_t


class SliceDataset(_CaseDataset):
    """2D training samples from 2D images and from slices of 3D volumes.

    Args:
        cases: loaded cases (``load_cases``). 2D cases are single slices.
        axis: spatial axis of 3D cases to slice along (-1 = last, e.g. axial z in RAS files).
        fg_fraction: fraction of drawn samples that contain a foreground class (the rest
            are drawn from slices without foreground). ``None``: no random draw, item i is
            slice i (validation). Falls back to any slice when one pool is empty.
        augment: ``True`` for the default :class:`Augmentation`, or an instance.
        normalize: "zscore" (per case and channel, masked to non-zero voxels for MR),
            "zscore-all", "zscore-nonzero", "none"/None.
        seed: seed of the draws; item i of epoch e is deterministic per (seed, e, i).
        num_classes: if given, label values outside [0, num_classes) raise ValueError.
        fg_classes: classes counting as foreground for sampling (default: all non-zero).

    Items: {"image": float32 (C, H, W), "label": int64 (H, W), "case_id": str,
    "slice_index": int}. Length: the number of slices.
    """

    def __init__(self, cases: Sequence[Volume], axis: int = -1, fg_fraction: float | None = 0.5,
                 augment: bool | Augmentation = False, normalize: str | None = "zscore", seed: int = 0,
                 num_classes: int | None = None, fg_classes: Sequence[int] | None = None):
        super().__init__(cases, fg_fraction, augment, normalize, seed, num_classes, fg_classes)
        if not -3 <= axis <= 2:
            raise ValueError(f"axis must be a spatial axis in [-3, 2], got {axis}")
        self.axis = axis
        case_idx, slice_idx, has_fg = [], [], []
        for i, c in enumerate(self.cases):
            fg = self._foreground(c.label)
            if c.spatial_dims == 2:
                per_slice = np.array([fg.any()])
            else:
                ax = axis % 3
                per_slice = fg.any(axis=tuple(a for a in range(3) if a != ax))
            case_idx.append(np.full(len(per_slice), i))
            slice_idx.append(np.arange(len(per_slice)))
            has_fg.append(per_slice)
        self._case_idx = np.concatenate(case_idx)
        self._slice_idx = np.concatenate(slice_idx)
        self._has_fg = np.concatenate(has_fg)
        self._fg_pool = np.flatnonzero(self._has_fg)
        self._bg_pool = np.flatnonzero(~self._has_fg)

    def __len__(self) -> int:
        return len(self._case_idx)

    @property
    def num_foreground_slices(self) -> int:
        return len(self._fg_pool)

    def _pick(self, index: int, rng: np.random.Generator) -> int:
        if self.fg_fraction is None:
            return index
        want_fg = rng.random() < self.fg_fraction
        pool = self._fg_pool if want_fg else self._bg_pool
        if len(pool) == 0:
            pool = self._bg_pool if want_fg else self._fg_pool
        return int(pool[rng.integers(len(pool))])

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices")
        index %= len(self)
        rng = self._rng(index)
        flat = self._pick(index, rng)
        ci, si = int(self._case_idx[flat]), int(self._slice_idx[flat])
        case = self.cases[ci]
        if case.spatial_dims == 2:
            image, label = case.image, case.label
        else:
            ax = self.axis % 3
            image = np.take(case.image, si, axis=ax + 1)
            label = np.take(case.label, si, axis=ax)
        image_t, label_t = self._finish(ci, image, label, rng)
        return {"image": image_t, "label": label_t, "case_id": case.case_id, "slice_index": si}


class VolumeDataset(_CaseDataset):
    """Whole volumes or random patches (foreground-aware) for 3D training.

    Args:
        cases: loaded cases (2D cases give 2D patches).
        patch_size: spatial patch shape, or None for whole cases (equal shapes are then
            needed to batch them). Cases smaller than the patch are zero-padded (after
            normalisation; labels with background).
        fg_fraction: probability that a patch is centred on a foreground voxel.
        samples_per_case: items per case per epoch.
        Other arguments as :class:`SliceDataset`.

    Items: {"image": float32 (C, D, H, W), "label": int64 (D, H, W), "case_id": str}.
    """

    def __init__(self, cases: Sequence[Volume], patch_size: Sequence[int] | None = None,
                 fg_fraction: float = 0.5, augment: bool | Augmentation = False,
                 normalize: str | None = "zscore", seed: int = 0, num_classes: int | None = None,
                 fg_classes: Sequence[int] | None = None, samples_per_case: int = 1):
        super().__init__(cases, fg_fraction, augment, normalize, seed, num_classes, fg_classes)
        if samples_per_case < 1:
            raise ValueError(f"samples_per_case must be >= 1, got {samples_per_case}")
        dims = {c.spatial_dims for c in self.cases}
        if len(dims) != 1:
            raise ValueError(f"cases must all be 2D or all 3D, got spatial dims {sorted(dims)}")
        self.spatial_dims = dims.pop()
        if patch_size is not None:
            patch_size = tuple(int(p) for p in patch_size)
            if len(patch_size) != self.spatial_dims or min(patch_size) < 1:
                raise ValueError(f"patch_size must give {self.spatial_dims} positive sizes, got {patch_size}")
        self.patch_size = patch_size
        self.samples_per_case = int(samples_per_case)
        seed_rng = np.random.default_rng(self.seed)
        self._fg_voxels = []
        for c in self.cases:  # a bounded random subset of foreground coordinates per case
            coords = np.argwhere(self._foreground(c.label))
            if len(coords) > 4096:
                coords = coords[seed_rng.choice(len(coords), 4096, replace=False)]
            self._fg_voxels.append(coords)

    def __len__(self) -> int:
        return len(self.cases) * self.samples_per_case

    def _crop(self, case_index: int, image: np.ndarray, label: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Random (foreground-centred with probability fg_fraction) crop and the padding it needs."""
        shape = np.array(label.shape)
        patch = np.array(self.patch_size)
        fg = self._fg_voxels[case_index]
        if len(fg) and rng.random() < (self.fg_fraction or 0.0):
            centre = fg[rng.integers(len(fg))]
            start = centre - patch // 2 + rng.integers(-(patch // 4), patch // 4 + 1)
        else:
            start = np.array([rng.integers(0, max(s - p, 0) + 1) for s, p in zip(shape, patch)])
        start = np.clip(start, 0, np.maximum(shape - patch, 0))
        region = tuple(slice(int(a), int(a + p)) for a, p in zip(start, patch))
        image, label = image[(slice(None),) + region], label[region]
        return image, label, [(0, int(p - s)) for p, s in zip(patch, label.shape)]

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        rng = self._rng(index)
        ci = index % len(self.cases)
        case = self.cases[ci]
        image, label, pad = case.image, case.label, None
        if self.patch_size is not None:
            image, label, pad = self._crop(ci, image, label, rng)
        image_t, label_t = self._finish(ci, image, label, rng, pad)
        return {"image": image_t, "label": label_t, "case_id": case.case_id}
