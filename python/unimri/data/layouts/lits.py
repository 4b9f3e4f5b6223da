"""LiTS (Liver Tumor Segmentation challenge, CT), as published::

    LiTS/                               (files may sit in sub-folders, e.g. "Training Batch 1/")
      volume-0.nii        segmentation-0.nii
      volume-1.nii        segmentation-1.nii   ... (.nii or .nii.gz)

Labels: 0 background, 1 liver, 2 tumour. ``target="tumour"`` gives a binary tumour
label, ``target="liver"`` a binary liver label (liver + tumour).
"""
from __future__ import annotations

import os
import re

from ..registry import register_layout
from ..volume import Volume
from .common import find_files, non_empty, volume_case

_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$", re.IGNORECASE)
TARGETS = ("all", "liver", "tumour")


def _detect(folder: str) -> bool:
    return any(_VOLUME.match(os.path.basename(p)) for p in find_files(folder, (".nii", ".nii.gz")))


@register_layout("lits", "LiTS CT: volume-N.nii + segmentation-N.nii (liver 1, tumour 2)", _detect)
def load_lits(folder: str, target: str = "all") -> list[Volume]:
    """Load LiTS volumes with their segmentations."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    files = find_files(folder, (".nii", ".nii.gz"))
    volumes = {int(m.group(1)): p for p in files if (m := _VOLUME.match(os.path.basename(p)))}
    segs = {int(m.group(1)): p for p in files if (m := _SEGMENTATION.match(os.path.basename(p)))}
    non_empty(folder, volumes, "LiTS volumes (volume-N.nii)")
    cases = []
    for n in sorted(volumes):
        if n not in segs:
            raise ValueError(f"LiTS volume {volumes[n]!r} has no segmentation-{n}.nii beside it")
        case = volume_case([volumes[n]], segs[n], f"lits_{n:03d}", 3,
                           {"dataset": "lits", "layout": "lits", "modality": "CT",
                            "classes": ["background", "liver", "tumour"]})
        if target == "tumour":
            case.label = (case.label == 2).astype("int64")
            case.meta["classes"] = ["background", "tumour"]
        elif target == "liver":
            case.label = (case.label > 0).astype("int64")
            case.meta["classes"] = ["background", "liver"]
        cases.append(case)
    return cases
