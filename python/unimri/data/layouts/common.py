"""Helpers shared by the folder layouts: assembling checked cases from files."""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from ..io import IMAGE_2D_SUFFIXES, read_image, suffix_of
from ..volume import Volume, check_label_values


def find_files(folder: str, suffixes: Sequence[str], recursive: bool = True) -> list[str]:
    """Sorted paths under ``folder`` whose lower-case name ends with one of ``suffixes``."""
    hits = []
    walker = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for root, _, files in walker:
        hits += [os.path.join(root, f) for f in files if f.lower().endswith(tuple(suffixes))
                 and not f.startswith(".")]
    return sorted(hits)


def strip_suffix(path: str) -> str:
    """File name without folder and without its (possibly double) suffix."""
    name = os.path.basename(path)
    return name[: len(name) - len(suffix_of(path))]


def same_geometry(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two 4x4 affines give the same voxel grid (origin, spacing, direction), up to a
    tolerance scaled by the voxel size."""
    scale = max(1.0, float(np.abs(a[:3, :3]).max()))
    return bool(np.allclose(a, b, atol=1e-3 * scale, rtol=1e-4))


def label_array(array: np.ndarray, path: str, num_classes: int) -> np.ndarray:
    """Checked int64 label map: integral values within [0, num_classes), else ValueError naming ``path``."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"label file {path!r}: values must be integer class indices, found "
                             f"non-integer values (dtype {array.dtype})")
    label = array.astype(np.int64)
    check_label_values(label, num_classes, f"label file {path!r}")
    return label


def binary_mask(array: np.ndarray, path: str) -> np.ndarray:
    """0/1 label from a mask stored as {0, 1} or {0, 255}; other values raise ValueError."""
    if array.ndim == 3 and array.shape[-1] in (3, 4) and suffix_of(path) in IMAGE_2D_SUFFIXES:
        array = array[..., 0] if np.all(array[..., :3] == array[..., :1]) else array
    values = set(np.unique(array).tolist())
    if values <= {0, 1}:
        return array.astype(np.int64)
    if values <= {0, 255}:
        return (array == 255).astype(np.int64)
    raise ValueError(f"mask file {path!r}: expected a binary mask with values {{0, 1}} or {{0, 255}}, "
                     f"got values {sorted(values)[:10]}")


def grey_channels(array: np.ndarray, path: str) -> np.ndarray:
    """2D image (H, W) or (H, W, 3|4) -> float32 (C, H, W); colour that is grey becomes 1 channel."""
    if array.ndim == 2:
        return array[None].astype(np.float32)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.all(rgb == rgb[..., :1]):
            return rgb[None, ..., 0].astype(np.float32)
        return np.moveaxis(rgb, -1, 0).astype(np.float32)
    raise ValueError(f"image file {path!r}: expected a 2D grey or RGB image, got shape {array.shape}")


def read_label_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(label array, 4x4 RAS affine) of a label file: any image format, or a DICOM SEG (.dcm)."""
    if path.lower().endswith(".dcm"):
        from ..dicom import read_seg

        return read_seg(path)
    array, affine, _, _ = read_image(path)
    return array, affine


def volume_case(image_paths: Sequence[str], label_path: str | None, case_id: str,
                num_classes: int, meta: dict, binary: bool = False) -> Volume:
    """Read channels and label of one 3D case; check shapes and affines agree.

    Args:
        image_paths: one file (or DICOM series folder) per channel (a 4D file contributes its
            last axis as channels).
        label_path: label file (a DICOM SEG when it ends in .dcm) or None.
        binary: the label is a {0,1}/{0,255} mask instead of class indices.
    """
    channels, affine, spacing, ref_path, header = [], None, None, None, None
    for path in image_paths:
        array, aff, sp, header = read_image(path)
        parts = [array] if array.ndim == 3 else [array[..., i] for i in range(array.shape[-1])] \
            if array.ndim == 4 else None
        if parts is None:
            raise ValueError(f"image file {path!r}: expected a 3D or 4D volume, got shape {array.shape}")
        if affine is None:
            affine, spacing, ref_path = aff, sp[:3], path
        elif parts[0].shape != channels[0].shape:
            raise ValueError(f"case {case_id!r}: image {path!r} has shape {parts[0].shape} but "
                             f"{ref_path!r} has {channels[0].shape}")
        elif not same_geometry(aff, affine):
            raise ValueError(f"case {case_id!r}: affine of {path!r} differs from that of {ref_path!r}")
        channels += parts
    label = None
    if label_path is not None:
        array, aff = read_label_file(label_path)
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.shape != channels[0].shape:
            raise ValueError(f"case {case_id!r}: label {label_path!r} has shape {array.shape} but image "
                             f"{ref_path!r} has {channels[0].shape}")
        if not same_geometry(aff, affine):
            raise ValueError(f"case {case_id!r}: affine of label {label_path!r} differs from that of "
                             f"image {ref_path!r}")
        label = binary_mask(array, label_path) if binary else label_array(array, label_path, num_classes)
    meta = {**meta, "image_files": list(image_paths), "label_file": label_path,
            "orientation": header.get("orientation") if header else None}
    return Volume(np.stack(channels).astype(np.float32), label, affine, spacing, case_id, meta)


def image_2d_case(image_path: str, label: np.ndarray | None, case_id: str, meta: dict,
                  label_path: str | None = None) -> Volume:
    """One 2D case: image (C, H, W) from ``image_path`` and an (H, W) label already built."""
    array, affine, spacing, _ = read_image(image_path)
    image = grey_channels(array, image_path)
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"case {case_id!r}: label {label_path or '(rasterised)'!r} has shape "
                         f"{label.shape} but image {image_path!r} has {image.shape[1:]}")
    return Volume(image, label, affine, spacing, case_id,
                  {**meta, "image_files": [image_path], "label_file": label_path})


def non_empty(folder: str, items: Iterable, what: str) -> list:
    """``items`` as a list; ValueError naming ``folder`` when there are none."""
    items = list(items)
    if not items:
        raise ValueError(f"folder {folder!r}: found no {what}")
    return items
