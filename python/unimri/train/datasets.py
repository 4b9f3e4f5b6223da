"""Glue between unimri.data and the trainer: datasets per fold and the per-stage collate."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from unimri.train.config import TrainConfig
from unimri.runtime.resize import fit_long_side, resize, soft_labels


class StageCollate:
    """Batch items of any native size at one progressive-resizing stage ``size``.

    ``size`` with ``keep_aspect`` (a :class:`unimri.train.config.StageSize` from a
    one-number stage, or ``keep_aspect=True``): the batch is resized so that its longest
    axis is ``max(size)`` and the others keep the aspect ratio of the batch's largest
    native extent per axis (:func:`unimri.runtime.resize.fit_long_side`); otherwise to
    exactly ``size``.

    Returns {"image": (B, C, *S') float32, "target": (B, K, *S') soft one-hot float32,
    "label": list of native (*S_i) int64 maps, "case_id": list of str}, S' the batch's
    stage shape. Picklable, so DataLoader workers can use it.
    """

    def __init__(self, size: Sequence[int], num_classes: int, keep_aspect: bool | None = None):
        self.size = tuple(int(s) for s in size)
        self.num_classes = int(num_classes)
        self.keep_aspect = bool(getattr(size, "keep_aspect", False) if keep_aspect is None else keep_aspect)

    def shape_for(self, natives: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The stage shape of a batch whose items have the native shapes ``natives``."""
        if not self.keep_aspect:
            return self.size
        extent = tuple(max(int(n[a]) for n in natives) for a in range(len(self.size)))
        return fit_long_side(extent, max(self.size))

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = []
        for item in items:
            image = torch.as_tensor(item["image"]).float()
            label = torch.as_tensor(item["label"]).long()
            if image.ndim != len(self.size) + 1:
                raise ValueError(f"image: expected (C, {', '.join('*' * len(self.size))}) items for stage "
                                 f"size {self.size}, got shape {tuple(image.shape)}")
            pairs.append((image, label))
        size = self.shape_for([tuple(image.shape[1:]) for image, _ in pairs])
        images = [resize(image[None], size)[0] for image, _ in pairs]
        targets = [soft_labels(label[None], self.num_classes, size)[0] for _, label in pairs]
        return {"image": torch.stack(images), "target": torch.stack(targets), "label": [lab for _, lab in pairs],
                "case_id": [item.get("case_id", "") for item in items]}


def infer_num_classes(cases: Sequence[Any]) -> int:
    """Number of classes: from ``meta['num_classes']`` or ``meta['classes']`` (names) if the
    loader set them, else the largest label + 1 (at least 2)."""
    declared = []
    for c in cases:
        meta = getattr(c, "meta", None) or {}
        if meta.get("num_classes") is not None:
            declared.append(int(meta["num_classes"]))
        elif meta.get("classes"):
            declared.append(len(meta["classes"]))
    if declared:
        return max(declared)
    top = max(int(c.label.max()) for c in cases if c.label is not None)
    return max(2, top + 1)


def infer_in_channels(cases: Sequence[Any]) -> int:
    channels = {int(c.image.shape[0]) for c in cases}
    if len(channels) != 1:
        raise ValueError(f"dataset: cases have different channel counts {sorted(channels)}")
    return channels.pop()


def make_dataset(cases: Sequence[Any], cfg: TrainConfig, num_classes: int, train: bool) -> Dataset:
    """SliceDataset (2D models) or VolumeDataset (3D models) over ``cases``.

    Validation sets use every slice (no foreground oversampling) and no augmentation.
    """
    from unimri.data import SliceDataset, VolumeDataset

    if cfg.spatial_dims == 2:
        return SliceDataset(list(cases), axis=cfg.slice_axis,
                            fg_fraction=cfg.fg_fraction if train else None,
                            augment=cfg.augment and train, normalize=cfg.normalize,
                            seed=cfg.seed, num_classes=num_classes)
    return VolumeDataset(list(cases), patch_size=cfg.patch, augment=cfg.augment and train,
                         normalize=cfg.normalize, seed=cfg.seed, num_classes=num_classes)
