"""Scoring prediction files against label files matched by case id (``unimri evaluate --pred``).

The metric table and the scoring of a model on cases live in :mod:`unimri.runtime.scoring`
(re-exported here).
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch

from unimri.runtime import registry
from unimri.runtime.scoring import (METRIC_NAMES, SURFACE_NAMES, EvalResult, evaluate_model,  # noqa: F401
                                    example_view, metric_table, normalized_image, score_case,
                                    summarize_cases)

_TAG = re.compile(r"(_seg|_pred|_prediction|_label|_labels|_mask|_gt)$", re.IGNORECASE)
_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net channel suffix of the image a prediction came from


def file_case_id(path: str) -> str:
    """Case id of a prediction or label file: the name without suffix and without a trailing
    ``_seg``/``_pred``/``_label``/``_mask``/``_gt`` tag (``case7_seg.nrrd`` -> ``case7``)."""
    from unimri.data.io import suffix_of

    name = os.path.basename(path)
    return _TAG.sub("", name[: len(name) - len(suffix_of(name))])


def _label_files(folder: str, what: str) -> dict[str, str]:
    from unimri.data.io import IMAGE_2D_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, suffix_of

    if not os.path.isdir(folder):
        raise ValueError(f"{what}: {folder!r} is not an existing folder")
    known = NIFTI_SUFFIXES + ITK_SUFFIXES + IMAGE_2D_SUFFIXES
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path) or suffix_of(name) not in known:
            continue
        case_id = file_case_id(name)
        if case_id in found:
            raise ValueError(f"{what}: {found[case_id]!r} and {path!r} both give case id {case_id!r}")
        found[case_id] = path
    if not found:
        raise ValueError(f"{what}: folder {folder!r} holds no image/label files")
    return found


def _read_label(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    from unimri.data.io import read_image

    array, affine, spacing, _ = read_image(path)
    if array.dtype.kind == "f" and not (np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0)):
        raise ValueError(f"label file {path!r}: expected integer class indices, found non-integer or "
                         f"non-finite values")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.size and array.min() < 0:
        raise ValueError(f"label file {path!r}: negative class index {int(array.min())}")
    return array.astype(np.int64), affine, tuple(spacing)[: array.ndim]


def evaluate_files(pred_dir: str, label_dir: str, progress: bool = True,
                   num_classes: int | None = None) -> tuple[EvalResult, list[str]]:
    """Score the prediction files of ``pred_dir`` against the label files of ``label_dir``.

    Files are matched by case id (:func:`file_case_id`; a prediction ``CASE_0000_seg`` of
    an nnU-Net image also matches ``CASE``). Each pair must have the same shape and
    geometry. Returns (result with IoU, DSC, precision, recall, HD95, ASD per case and
    mean, ids of labels without a prediction). A prediction without a label raises.
    """
    from tqdm.auto import tqdm

    preds = _label_files(pred_dir, "pred")
    labels = _label_files(label_dir, "labels")
    pairs: list[tuple[str, str, str]] = []
    for case_id, pred_path in preds.items():
        key = case_id if case_id in labels else _CHANNEL.sub("", case_id)
        if key not in labels:
            raise ValueError(f"pred: {pred_path!r} (case {case_id!r}) has no label file in {label_dir!r}")
        pairs.append((key, pred_path, labels[key]))
    matched = {key for key, _, _ in pairs}
    if len(matched) != len(pairs):
        raise ValueError(f"pred: several prediction files match the same label file in {pred_dir!r}")
    unmatched = sorted(set(labels) - matched)
    top = 0
    for case_id, pred_path, label_path in sorted(pairs):  # pass 1: check every pair first
        pred, label, _ = _read_pair(case_id, pred_path, label_path)
        top = max(top, int(pred.max(initial=0)), int(label.max(initial=0)))
    classes = max(2, top + 1) if num_classes is None else int(num_classes)
    if top >= classes:
        raise ValueError(f"num_classes: {classes} given but the files hold class {top}")
    metrics = registry.metrics_object(classes)
    per_case = []
    for case_id, pred_path, label_path in tqdm(sorted(pairs), desc="evaluate", leave=False, disable=not progress):
        pred, label, spacing = _read_pair(case_id, pred_path, label_path)  # one case in memory at a time
        per_case.append(score_case(metrics, torch.from_numpy(pred), torch.from_numpy(label), case_id, spacing))
    return summarize_cases(metrics, per_case, [], True), unmatched


def _read_pair(case_id: str, pred_path: str, label_path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    from unimri.data.layouts.common import same_geometry

    pred, pred_affine, _ = _read_label(pred_path)
    label, label_affine, spacing = _read_label(label_path)
    if pred.shape != label.shape:
        raise ValueError(f"case {case_id!r}: prediction {pred_path!r} has shape {pred.shape} but label "
                         f"{label_path!r} has {label.shape}")
    if pred.ndim == 3 and not same_geometry(pred_affine, label_affine):
        raise ValueError(f"case {case_id!r}: prediction {pred_path!r} and label {label_path!r} have "
                         f"different geometry (origin, spacing or direction)")
    return pred, label, spacing
