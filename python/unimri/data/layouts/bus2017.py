"""BUS 2017 Dataset B (Yap et al., breast ultrasound; 163 images), as published::

    BUS_Dataset_B/
      original/000001.png ... 000163.png    grey ultrasound images
      GT/000001.png ...                     binary lesion masks (0/255), same names

Classes: 0 background, 1 lesion. Image files without a mask raise ValueError.
"""
from __future__ import annotations

import os

from ..io import read_image
from ..registry import register_layout
from ..volume import Volume
from .common import binary_mask, find_files, image_2d_case, non_empty, strip_suffix


def _dirs(folder: str) -> tuple[str, str] | None:
    entries = {e.lower(): e for e in os.listdir(folder)}
    if "original" in entries and "gt" in entries:
        return os.path.join(folder, entries["original"]), os.path.join(folder, entries["gt"])
    return None


def _detect(folder: str) -> bool:
    return _dirs(folder) is not None


@register_layout("bus2017", "BUS 2017 Dataset B: original/NNNNNN.png images, GT/NNNNNN.png masks", _detect)
def load_bus2017(folder: str) -> list[Volume]:
    """Load BUS 2017 Dataset B (2D ultrasound, binary lesion masks)."""
    dirs = _dirs(folder)
    if dirs is None:
        raise ValueError(f"folder {folder!r}: BUS 2017 layout needs subfolders 'original' and 'GT'")
    image_dir, mask_dir = dirs
    images = non_empty(image_dir, find_files(image_dir, (".png", ".bmp", ".jpg"), recursive=False),
                       "BUS images (original/*.png)")
    masks = {strip_suffix(p): p for p in find_files(mask_dir, (".png", ".bmp"), recursive=False)}
    cases = []
    for path in images:
        stem = strip_suffix(path)
        if stem not in masks:
            raise ValueError(f"BUS image {path!r} has no mask {os.path.join(mask_dir, stem + '.png')!r}")
        label = binary_mask(read_image(masks[stem])[0], masks[stem])
        meta = {"dataset": "bus2017", "layout": "bus2017", "modality": "US",
                "classes": ["background", "lesion"]}
        cases.append(image_2d_case(path, label, f"bus_{stem}", meta, masks[stem]))
    return cases
