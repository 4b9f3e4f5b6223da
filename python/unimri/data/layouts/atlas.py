"""ATLAS (Anatomical Tracings of Lesions After Stroke, T1 MR), both published layouts::

    ATLAS_R1.2/Site1/031768/t01/031768_t1w_deface_stx.nii.gz
                              /031768_LesionSmooth_stx.nii.gz   (several: _LesionSmooth_1_stx, ...)
    ATLAS_2/Training/R001/sub-r001s001/ses-1/anat/
        sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
        sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

A case is a folder holding one T1w image and one or more lesion masks (0/1 or 0/255),
united into one binary label. ``meta["group"]`` is the subject (R1.2: the numeric folder;
v2: ``sub-...``), so all scans of one subject (``ses-1``, ``ses-2``, ...) stay in one fold.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..io import read_image
from ..registry import register_layout
from ..volume import Volume
from .common import binary_mask, find_files, non_empty, volume_case


def _is_t1(name: str) -> bool:
    low = name.lower()
    return "t1w" in low and "lesion" not in low and "mask" not in low


def _is_mask(name: str) -> bool:
    low = name.lower()
    return "lesion" in low


def _detect(folder: str) -> bool:
    files = [os.path.basename(p) for p in find_files(folder, (".nii", ".nii.gz"))]
    return any(_is_t1(f) for f in files) and any(_is_mask(f) for f in files)


def _subject(rel_dir: str) -> str:
    for part in rel_dir.split(os.sep):
        if part.startswith("sub-") or re.fullmatch(r"\d{4,}", part):
            return part
    return rel_dir


@register_layout("atlas", "ATLAS stroke T1 MR: *_t1w*.nii.gz with *Lesion*.nii.gz masks (R1.2 or v2 BIDS)",
                 _detect)
def load_atlas(folder: str) -> list[Volume]:
    """Load ATLAS cases (one per folder holding a T1w image and lesion mask(s))."""
    by_dir: dict[str, list[str]] = {}
    for path in find_files(folder, (".nii", ".nii.gz")):
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    cases = []
    for directory in sorted(by_dir):
        files = by_dir[directory]
        t1 = [p for p in files if _is_t1(os.path.basename(p))]
        masks = [p for p in files if _is_mask(os.path.basename(p))]
        if not t1:
            continue
        if len(t1) > 1:
            raise ValueError(f"ATLAS folder {directory!r} holds several T1w images {t1}; expected one")
        if not masks:
            raise ValueError(f"ATLAS image {t1[0]!r} has no lesion mask (*Lesion*.nii.gz) beside it")
        rel = os.path.relpath(directory, folder)
        case_id = "atlas_" + rel.replace(os.sep, "_")
        meta = {"dataset": "atlas", "layout": "atlas", "modality": "MR", "group": f"atlas_{_subject(rel)}",
                "classes": ["background", "lesion"], "mask_files": masks}
        case = volume_case(t1, masks[0], case_id, 2, meta, binary=True)
        for extra in masks[1:]:
            array = read_image(extra)[0]
            if array.shape != case.label.shape:
                raise ValueError(f"ATLAS mask {extra!r} has shape {array.shape}, image has {case.label.shape}")
            case.label = np.maximum(case.label, binary_mask(array, extra))
        cases.append(case)
    return non_empty(folder, cases, "ATLAS cases (*t1w*.nii.gz with lesion masks)")
