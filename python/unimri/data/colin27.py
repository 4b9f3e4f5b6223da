"""``colin27-hippocampus``: real T1 MR (Colin27 / ch2) with AAL hippocampus labels.

Source: Debian package ``mricron-data`` (``/usr/share/mricron/templates/ch2.nii.gz``, T1
MR 181x217x181 at 1 mm, with the AAL atlas ``aal.nii.gz`` on the same grid). Labels:
0 background, 1 hippocampus (AAL 37/38, 0.21 % of voxels), and with
``amygdala=True`` 2 amygdala (AAL 41/42, about 0.05 %).

It is ONE subject. For k-fold cross-validation ``cases=`` cuts it into pieces treated as
cases: "hemispheres" (left/right at the mid-sagittal plane, 2 cases) or "slabs"
(``num_slabs`` slabs along an axis, boundaries spread over the labelled extent so each
slab holds foreground). The pieces share one brain, contrast and scanner, so
cross-validation on them measures fitting of held-out anatomy of the same subject, not
generalisation to new subjects; report it as such.
"""
from __future__ import annotations

import os

import numpy as np

from .io import read_image
from .registry import register_builtin
from .resample import resample
from .volume import Volume

MRICRON_DIR = "/usr/share/mricron/templates"
HIPPOCAMPUS = (37, 38)
AMYGDALA = (41, 42)
CASE_MODES = ("single", "hemispheres", "slabs")
INSTALL_HINT = "sudo apt-get install mricron-data"


def _template_paths(root: str | None) -> tuple[str, str]:
    root = root or os.environ.get("UNIMRI_MRICRON_DIR", MRICRON_DIR)
    image, atlas = os.path.join(root, "ch2.nii.gz"), os.path.join(root, "aal.nii.gz")
    missing = [p for p in (image, atlas) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"colin27-hippocampus needs the Debian package mricron-data "
                                f"({INSTALL_HINT}); missing {missing}. Set root= or UNIMRI_MRICRON_DIR "
                                f"to a folder holding ch2.nii.gz and aal.nii.gz.")
    return image, atlas


def colin27_available(root: str | None = None) -> bool:
    """True when ch2.nii.gz and aal.nii.gz are present."""
    try:
        _template_paths(root)
        return True
    except FileNotFoundError:
        return False


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _crop(case: Volume, region: tuple[slice, ...], case_id: str, extra: dict) -> Volume:
    """Sub-volume with the affine shifted to the region's first voxel."""
    start = np.array([s.start or 0 for s in region] + [1.0])
    affine = case.affine.copy()
    affine[:, 3] = case.affine @ start
    return Volume(case.image[(slice(None),) + region], case.label[region], affine, case.spacing,
                  case_id, {**case.meta, **extra})


def colin27_cases(cases: str = "single", num_slabs: int = 5, slab_axis: int = 2,
                  amygdala: bool = False, crop_margin: int | None = None, downsample: int = 1,
                  root: str | None = None) -> list[Volume]:
    """Load Colin27 T1 with hippocampus (and optionally amygdala) labels.

    Args:
        cases: "single" (one 181x217x181 case), "hemispheres" (2) or "slabs" (num_slabs).
        num_slabs: number of slabs for ``cases="slabs"``.
        slab_axis: voxel axis the slabs are cut along (2 = inferior-superior: each slab is a
            stack of whole axial slices, which suits 2D training along axis -1). Slab
            boundaries are spread over the labelled extent, so every slab holds foreground.
        amygdala: add class 2 = amygdala.
        crop_margin: crop to the labels' bounding box plus this many voxels (None: no crop).
        downsample: integer factor; image linear, labels nearest (small structures shrink
            by partial voxels; 2 keeps the hippocampus).
        root: folder with ch2.nii.gz and aal.nii.gz (default the mricron-data folder).

    Returns:
        list of Volume (1 channel, MR, 1 mm * downsample spacing).
    """
    if cases not in CASE_MODES:
        raise ValueError(f"cases must be one of {CASE_MODES}, got {cases!r}")
    if not isinstance(downsample, (int, np.integer)) or downsample < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
    if crop_margin is not None and crop_margin < 0:
        raise ValueError(f"crop_margin must be >= 0 or None, got {crop_margin!r}")
    image_path, atlas_path = _template_paths(root)
    image, affine, spacing, _ = read_image(image_path)
    atlas = read_image(atlas_path)[0]
    label = np.isin(atlas, HIPPOCAMPUS).astype(np.int64)
    classes = ["background", "hippocampus"]
    if amygdala:
        label[np.isin(atlas, AMYGDALA)] = 2
        classes.append("amygdala")
    case = Volume(image[None].astype(np.float32), label, affine, spacing, "colin27",
                  {"dataset": "colin27-hippocampus", "modality": "MR", "classes": classes,
                   "image_files": [image_path], "label_file": atlas_path, "group": "colin27"})
    if crop_margin is not None:
        case = _crop(case, _bbox(case.label > 0, crop_margin), "colin27", {"crop_margin": crop_margin})
    if downsample > 1:
        case = resample(case, spacing=tuple(s * downsample for s in case.spacing), order=1)
    if cases == "single":
        return [case]
    if cases == "hemispheres":
        # voxel axis 0 runs left -> right (x); split at world x = 0, the mid-sagittal plane
        mid = int(round(-case.affine[0, 3] / case.affine[0, 0]))
        mid = min(max(mid, 1), case.spatial_shape[0] - 1)
        sides = ("left", "right") if case.affine[0, 0] > 0 else ("right", "left")
        regions = [(slice(0, mid), slice(None), slice(None)), (slice(mid, None), slice(None), slice(None))]
        return [_crop(case, r, f"colin27_{side}", {"piece": side}) for r, side in zip(regions, sides)]
    if not 2 <= num_slabs <= case.spatial_shape[slab_axis]:
        raise ValueError(f"num_slabs must be in [2, {case.spatial_shape[slab_axis]}], got {num_slabs}")
    fg = np.flatnonzero((case.label > 0).any(axis=tuple(a for a in range(3) if a != slab_axis)))
    edges = np.round(np.linspace(fg[0], fg[-1] + 1, num_slabs + 1)).astype(int)
    edges[0], edges[-1] = 0, case.spatial_shape[slab_axis]
    pieces = []
    for i in range(num_slabs):
        region = [slice(None)] * 3
        region[slab_axis] = slice(int(edges[i]), int(edges[i + 1]))
        pieces.append(_crop(case, tuple(region), f"colin27_slab{i}", {"piece": f"slab {i}"}))
    return pieces


register_builtin("colin27-hippocampus", "real T1 MR (Colin27, Debian mricron-data) with AAL hippocampus "
                 "labels (0.21 % of voxels), optional amygdala")(colin27_cases)
