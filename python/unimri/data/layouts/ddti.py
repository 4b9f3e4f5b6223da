"""DDTI (Digital Database of Thyroid Ultrasound Images, Pedraza et al. 2015), as published::

    DDTI/
      1.xml        1_1.jpg  1_2.jpg      one XML per patient N, images N_M.jpg
      2.xml        2_1.jpg  ...

Each XML holds ``<case><number>N</number> ... <mark><image>M</image><svg>[{"points":
[{"x": .., "y": ..}, ...], "regionType": "freehand"}, ...]</svg></mark> ...</case>``; the
polygons of image M are rasterised (filled) to a 0/1 nodule mask. Images without a mark
are skipped (unannotated). Case ids are ``ddti_N_M`` with ``meta["group"] = "ddti_N"``
(the patient), so :func:`kfold_split` with groups keeps a patient's images together.
"""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from ..io import _require, read_image
from ..registry import register_layout
from ..volume import Volume
from .common import find_files, image_2d_case, non_empty

_IMAGE = re.compile(r"^(\d+)_(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def _detect(folder: str) -> bool:
    names = os.listdir(folder)
    return any(n.lower().endswith(".xml") for n in names) and any(_IMAGE.match(n) for n in names)


def read_ddti_xml(path: str) -> dict[int, list[list[tuple[float, float]]]]:
    """Polygons per image number from one DDTI XML file; ValueError naming the file if unreadable."""
    try:
        root = ET.parse(path).getroot()
        polygons: dict[int, list[list[tuple[float, float]]]] = {}
        for mark in root.iter("mark"):
            number = int(mark.findtext("image", "").strip())
            svg = (mark.findtext("svg") or "").strip()
            regions = json.loads(svg) if svg else []
            for region in regions:
                points = [(float(p["x"]), float(p["y"])) for p in region["points"]]
                if len(points) < 3:
                    raise ValueError(f"polygon with {len(points)} point(s)")
                polygons.setdefault(number, []).append(points)
    except (ET.ParseError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"DDTI annotation {path!r}: cannot read polygons ({type(exc).__name__}: {exc})") from exc
    return polygons


def rasterise(polygons: list[list[tuple[float, float]]], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons (x = column, y = row) into an int64 0/1 mask of ``shape`` (H, W)."""
    pil = _require("PIL.Image", "pillow", "rasterising DDTI polygons")
    from PIL import ImageDraw

    canvas = pil.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon(poly, outline=1, fill=1)
    return np.asarray(canvas, dtype=np.int64)


@register_layout("ddti", "DDTI thyroid US: N_M.jpg images with N.xml polygon annotations", _detect)
def load_ddti(folder: str) -> list[Volume]:
    """Load DDTI images with rasterised nodule masks."""
    xml_files = non_empty(folder, find_files(folder, (".xml",), recursive=False), "DDTI annotations (N.xml)")
    images: dict[tuple[int, int], str] = {}
    for name in os.listdir(folder):
        if (m := _IMAGE.match(name)):
            images[(int(m.group(1)), int(m.group(2)))] = os.path.join(folder, name)
    cases = []
    for xml_path in xml_files:
        stem = os.path.basename(xml_path)[:-4]
        if not stem.isdigit():
            continue
        patient = int(stem)
        for number, polygons in sorted(read_ddti_xml(xml_path).items()):
            key = (patient, number)
            if key not in images:
                raise ValueError(f"DDTI annotation {xml_path!r} marks image {number}, but "
                                 f"{patient}_{number}.jpg is not in {folder!r}")
            shape = read_image(images[key])[0].shape[:2]
            label = rasterise(polygons, shape)
            meta = {"dataset": "ddti", "layout": "ddti", "modality": "US", "group": f"ddti_{patient}",
                    "classes": ["background", "nodule"], "annotation_file": xml_path}
            cases.append(image_2d_case(images[key], label, f"ddti_{patient}_{number}", meta))
    return non_empty(folder, cases, "annotated DDTI images")
