"""nnU-Net raw layout (v1 and v2 ``dataset.json``)::

    Dataset001_Name/
      dataset.json           {"channel_names": {"0": "T2"}, "labels": {"background": 0, "tumour": 1},
                              "file_ending": ".nii.gz", ...}   (v1: "modality", "labels" {"0": ...})
      imagesTr/CASE_0000.nii.gz   one file per channel, suffix _XXXX = channel index
      labelsTr/CASE.nii.gz

A channel may also be a DICOM series folder ``imagesTr/CASE_0000/`` (read as
:func:`unimri.data.read_image` reads series: sorted by position, rescaled, geometry checked),
and a label a DICOM SEG ``labelsTr/CASE.dcm`` that references it.
"""
from __future__ import annotations

import os
import re

from unimri._atomic import read_json_object
from ..dicom import is_dicom_path
from ..io import IMAGE_2D_SUFFIXES, read_image
from ..registry import register_layout
from ..volume import Volume
from .common import find_files, image_2d_case, label_array, non_empty, volume_case

_MR_WORDS = ("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "SWI", "BOLD")


def _detect(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "dataset.json")) and \
        os.path.isdir(os.path.join(folder, "imagesTr"))


def _read_json(folder: str) -> dict:
    path = os.path.join(folder, "dataset.json")
    spec = read_json_object(path, "nnU-Net dataset.json")
    missing = [k for k in ("labels",) if k not in spec]
    if "channel_names" not in spec and "modality" not in spec:
        missing.append("channel_names (v2) or modality (v1)")
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    return spec


def _classes(spec: dict, path: str) -> list[str]:
    """Class names indexed by label value, from v2 {name: value} or v1 {"value": name}."""
    by_value: dict[int, str] = {}
    for key, value in spec["labels"].items():
        try:
            if isinstance(value, int):
                by_value[value] = key
            else:
                by_value[int(key)] = str(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: 'labels' entry {key!r}: {value!r} is neither name -> int (v2) "
                             f"nor \"int\" -> name (v1)") from exc
    if sorted(by_value) != list(range(len(by_value))):
        raise ValueError(f"{path}: label values must be 0..n-1, got {sorted(by_value)}")
    return [by_value[i] for i in range(len(by_value))]


_SERIES = re.compile(r"^(.+)_(\d{4})$")  # a channel given as a DICOM series folder


def _label_path(label_dir: str, case_id: str, ending: str) -> str:
    """labelsTr/CASE<ending>, else a DICOM SEG labelsTr/CASE.dcm; ValueError naming both."""
    candidates = [os.path.join(label_dir, case_id + e) for e in dict.fromkeys((ending, ".dcm"))]
    for path in candidates:
        if os.path.isfile(path):
            return path
    also = f" (nor a DICOM SEG {candidates[1]!r})" if len(candidates) > 1 else ""
    raise ValueError(f"case {case_id!r}: label file {candidates[0]!r} does not exist{also}")


@register_layout("nnunet", "nnU-Net raw: dataset.json, imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz",
                 _detect)
def load_nnunet(folder: str, images: str = "imagesTr", labels: str | None = "labelsTr") -> list[Volume]:
    """Load an nnU-Net raw dataset folder (``images="imagesTs", labels=None`` for test cases)."""
    json_path = os.path.join(folder, "dataset.json")
    spec = _read_json(folder)
    classes = _classes(spec, json_path)
    channels = spec.get("channel_names", spec.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f"{json_path}: channel_names/modality must be a non-empty object, got {channels!r}")
    ending = spec.get("file_ending", ".nii.gz")
    names = [str(channels[k]) for k in sorted(channels, key=int)]
    modality = "CT" if all(n.upper() == "CT" for n in names) else \
        "MR" if any(w in n.upper() for n in names for w in _MR_WORDS) else "other"
    image_dir = os.path.join(folder, images)
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, dict[int, str]] = {}
    for path in find_files(image_dir, (ending,), recursive=False) if os.path.isdir(image_dir) else []:
        match = pattern.match(os.path.basename(path))
        if match:
            by_case.setdefault(match.group(1), {})[int(match.group(2))] = path
    series: set[str] = set()  # channels given as DICOM series folders
    for name in sorted(os.listdir(image_dir)) if os.path.isdir(image_dir) else []:
        match = _SERIES.match(name)
        if match and os.path.isdir(os.path.join(image_dir, name)) and is_dicom_path(os.path.join(image_dir, name)):
            series.add(os.path.join(image_dir, name))
            by_case.setdefault(match.group(1), {})[int(match.group(2))] = os.path.join(image_dir, name)
    non_empty(image_dir, by_case, f"images named CASE_XXXX{ending} or DICOM series folders CASE_XXXX/")
    cases = []
    for case_id in sorted(by_case):
        files = by_case[case_id]
        missing = [f"{case_id}_{c:04d}{ending}" for c in range(len(names)) if c not in files]
        if missing:
            raise ValueError(f"{image_dir}: case {case_id!r} lacks channel file(s) or DICOM series folder(s) "
                             f"{missing}")
        label_path = None if labels is None else _label_path(os.path.join(folder, labels), case_id, ending)
        meta = {"dataset": spec.get("name", os.path.basename(os.path.abspath(folder))),
                "layout": "nnunet", "modality": modality, "channels": names, "classes": classes}
        paths = [files[c] for c in range(len(names))]
        if ending.lower() in IMAGE_2D_SUFFIXES and not any(p in series for p in paths):
            label = None
            if label_path is not None:
                label = label_array(read_image(label_path)[0], label_path, len(classes))
            case = image_2d_case(paths[0], label, case_id, meta, label_path)
            if len(paths) > 1:
                raise ValueError(f"{json_path}: 2D nnU-Net datasets with several channel files are not "
                                 f"supported (case {case_id!r})")
        else:
            case = volume_case(paths, label_path, case_id, len(classes), meta)
        cases.append(case)
    return cases
