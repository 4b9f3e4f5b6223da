"""DICOM in and out: image series (pydicom) to a RAS+ volume, label volumes to DICOM SEG (highdicom).

Reading. A DICOM input is a folder of slice files, one single-frame or multi-frame
(enhanced) file, or a folder holding several series told apart by SeriesInstanceUID
(then ``series_uid`` picks one). Slices are sorted by their position along the slice
normal (never by file name); the geometry comes from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing; RescaleSlope/RescaleIntercept are applied.
The returned array is indexed (column, row, slice) = (X, Y, Z), the order ITK and
SimpleITK use, and the (4, 4) affine maps those indices to RAS+ millimetres (DICOM's
LPS converted), as :func:`unimri.data.io.read_image` does for every format.

Refused with a ValueError naming the file or folder: mixed sizes, orientations or pixel
spacings within a series, two slices at the same position, a gantry tilt (slices not
stacked along their normal), uneven slice gaps (a missing slice), files without pixel
data only, truncated files. The declared grid (rows × columns × slices) is checked with
:func:`unimri.data.limits.check_declared_shape` before any pixel data is decoded.

Writing. :func:`write_seg` stores a label volume (X, Y, Z) on a source series' grid as
a DICOM Segmentation (one segment per label value > 0) referencing the source
instances; :func:`read_seg` reads such a file back into a label volume and affine.
pydicom (and highdicom for SEG output) are optional: ``pip install 'unimri[dicom]'``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .limits import check_declared_shape
from .volume import orientation_code

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Tolerances on geometry (DICOM stores decimal strings with ~16 significant characters).
_ORIENTATION_TOL = 1e-4
_GAP_REL_TOL = 0.01  # relative spread of slice gaps still called even
_TILT_TOL = 1e-3  # |sin| of the angle between the slice step and the normal


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError("reading DICOM needs the optional package 'pydicom': pip install pydicom "
                          "(or pip install 'unimri[dicom]')") from exc
    return pydicom


def _highdicom():
    try:
        import highdicom
    except ImportError as exc:
        raise ImportError("writing DICOM SEG needs the optional package 'highdicom': pip install highdicom "
                          "(or pip install 'unimri[dicom]')") from exc
    return highdicom


def is_dicom_path(path: str) -> bool:
    """True for a file ending in a DICOM suffix, or a folder holding such a file or a file
    that starts with the DICOM preamble ("DICM" at byte 128) and no other image files."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path.lower().endswith(DICOM_SUFFIXES) or _has_dicom_magic(path)
    if not os.path.isdir(path):
        return False
    names = [n for n in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, n))]
    return any(n.lower().endswith(DICOM_SUFFIXES) or _has_dicom_magic(os.path.join(path, n))
               for n in names[:64])


def _has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass
class _Frame:
    """One 2D frame of a series: where it is and how to decode it."""

    path: str
    frame: int | None  # index within a multi-frame file, None for a single-frame file
    position: np.ndarray  # ImagePositionPatient (3,), LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    spacing: tuple[float, float]  # PixelSpacing (row spacing, column spacing)
    slope: float
    intercept: float


def _floats(value, count: int, what: str, path: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise ValueError(f"DICOM file {path!r}: {what} must hold {count} numbers, got {value!r}")
    return out


def _first(seq_owner, keyword: str):
    seq = getattr(seq_owner, keyword, None)
    return seq[0] if seq else None


def _frames_of(ds, path: str) -> list[_Frame]:
    """The frames of one dataset (single-frame or enhanced multi-frame), geometry checked."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    out = []
    for index in range(frames):
        groups = [g for g in ((per_frame[index] if per_frame and index < len(per_frame) else None), shared)
                  if g is not None]

        def find(seq_kw: str, kw: str, default=None):
            for group in groups:
                item = _first(group, seq_kw)
                if item is not None and kw in item:
                    return item.get(kw)
            return getattr(ds, kw, default)

        position = find("PlanePositionSequence", "ImagePositionPatient")
        orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = find("PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            missing = [n for n, v in (("ImagePositionPatient", position), ("ImageOrientationPatient", orientation),
                                      ("PixelSpacing", spacing)) if v is None]
            raise ValueError(f"DICOM file {path!r}: no {', '.join(missing)}; cannot place the image in space")
        slope = find("PixelValueTransformationSequence", "RescaleSlope", 1.0)
        intercept = find("PixelValueTransformationSequence", "RescaleIntercept", 0.0)
        orient = _floats(orientation, 6, "ImageOrientationPatient", path)
        row_dir, col_dir = orient[:3], orient[3:]
        if (abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
                or abs(row_dir @ col_dir) > 1e-3):
            raise ValueError(f"DICOM file {path!r}: ImageOrientationPatient {list(orient)} is not two "
                             f"orthogonal unit vectors")
        spacing_rc = _floats(spacing, 2, "PixelSpacing", path)
        if np.any(spacing_rc <= 0):
            raise ValueError(f"DICOM file {path!r}: PixelSpacing must be positive, got {list(spacing_rc)}")
        out.append(_Frame(path, index if frames > 1 else None, _floats(position, 3, "ImagePositionPatient", path),
                          orient, (float(spacing_rc[0]), float(spacing_rc[1])),
                          float(slope if slope is not None else 1.0),
                          float(intercept if intercept is not None else 0.0)))
    return out


@dataclass
class DicomSeries:
    """A series' headers (no pixel data): its frames sorted along the slice normal."""

    uid: str
    frames: list[_Frame]
    rows: int
    columns: int
    itemsize: int
    datasets: dict[str, Any]  # path -> header dataset (pixel data not read)
    where: str  # the folder or file the series was found in, for messages

    @property
    def shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) = (columns, rows, slices)."""
        return (self.columns, self.rows, len(self.frames))


def _list_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    names = sorted(os.listdir(path))
    return [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))
            and not n.startswith(".")]


def scan_series(path: str) -> dict[str, list[tuple[str, Any]]]:
    """SeriesInstanceUID -> [(file, header dataset)] for the image files under ``path``.

    Files that are not DICOM are ignored in a folder (named in the error if nothing is
    left); DICOM files without pixel data (reports, RT structures, presentation states)
    are ignored too. A single file must be a readable DICOM image.
    """
    pydicom = _pydicom()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"DICOM input {path!r} does not exist")
    series: dict[str, list[tuple[str, Any]]] = {}
    skipped: list[str] = []
    for file in _list_files(path):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises InvalidDicomError, EOFError, struct.error...
            if os.path.isfile(path):
                raise ValueError(f"DICOM file {file!r} cannot be read (not DICOM, truncated or corrupt?): "
                                 f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
            skipped.append(os.path.basename(file))
            continue
        if "Rows" not in ds or "Columns" not in ds:
            if os.path.isfile(path):
                raise ValueError(f"DICOM file {file!r} holds no image (SOP class "
                                 f"{getattr(ds, 'SOPClassUID', '?')}, no Rows/Columns)")
            skipped.append(os.path.basename(file))
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        series.setdefault(uid, []).append((file, ds))
    if not series:
        extra = f" ({len(skipped)} other file(s) skipped: {', '.join(skipped[:3])})" if skipped else ""
        raise ValueError(f"DICOM input {path!r} holds no DICOM image files{extra}")
    return series


def load_series(path: str, series_uid: str | None = None) -> DicomSeries:
    """The headers of the one series at ``path`` (or ``series_uid``), checked and sorted.

    Raises:
        ValueError naming the path: several series and no ``series_uid``, unknown uid,
        inconsistent frames, duplicate positions, gantry tilt or uneven slice gaps.
    """
    path = os.fspath(path)
    found = scan_series(path)
    if series_uid is not None:
        if series_uid not in found:
            raise ValueError(f"DICOM input {path!r}: no series {series_uid!r}; it holds "
                             f"{_describe(found)}")
        files = found[series_uid]
        uid = series_uid
    elif len(found) > 1:
        raise ValueError(f"DICOM input {path!r} holds {len(found)} series ({_describe(found)}); "
                         f"put each series in its own folder or pass series_uid")
    else:
        uid, files = next(iter(found.items()))
    first_path, first = files[0]
    rows, columns = int(first.Rows), int(first.Columns)
    bits = int(getattr(first, "BitsAllocated", 16) or 16)
    samples = int(getattr(first, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise ValueError(f"DICOM file {first_path!r}: {samples} samples per pixel (colour); only "
                         f"greyscale series are supported")
    frames: list[_Frame] = []
    for file, ds in files:
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise ValueError(f"DICOM series {uid} in {path!r}: {file!r} is {int(ds.Rows)}x{int(ds.Columns)} "
                             f"but {first_path!r} is {rows}x{columns} (mixed series?)")
        frames.extend(_frames_of(ds, file))
    series = DicomSeries(uid, frames, rows, columns, max(bits // 8, 1), dict(files), path)
    _sort_and_check(series)
    return series


def _describe(found: dict[str, list]) -> str:
    return ", ".join(f"{uid}: {len(files)} file(s)" for uid, files in found.items())


def _sort_and_check(series: DicomSeries) -> None:
    frames = series.frames
    ref = frames[0]
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - ref.orientation)) > _ORIENTATION_TOL:
            raise ValueError(f"DICOM series {series.uid} in {series.where!r}: {_name(f)} has orientation "
                             f"{list(f.orientation)} but {_name(ref)} has {list(ref.orientation)} (mixed series?)")
        if not np.allclose(f.spacing, ref.spacing, rtol=1e-4, atol=1e-6):
            raise ValueError(f"DICOM series {series.uid} in {series.where!r}: {_name(f)} has PixelSpacing "
                             f"{f.spacing} but {_name(ref)} has {ref.spacing} (mixed series?)")
    normal = np.cross(ref.orientation[:3], ref.orientation[3:])
    depth = np.array([f.position @ normal for f in frames])
    order = np.argsort(depth, kind="stable")
    series.frames = [frames[i] for i in order]
    depth = depth[order]
    if len(frames) < 2:
        return
    gaps = np.diff(depth)
    if np.any(gaps < 1e-4 * max(ref.spacing)):
        i = int(np.argmin(gaps))
        raise ValueError(f"DICOM series {series.uid} in {series.where!r}: {_name(series.frames[i])} and "
                         f"{_name(series.frames[i + 1])} lie at the same position (duplicate slice or "
                         f"several acquisitions in one series)")
    steps = np.diff(np.stack([f.position for f in series.frames]), axis=0)
    lateral = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if np.any(lateral > _TILT_TOL * np.linalg.norm(steps, axis=1)):
        i = int(np.argmax(lateral))
        raise ValueError(f"DICOM series {series.uid} in {series.where!r}: slices are not stacked along their "
                         f"normal (gantry tilt or sheared series: {_name(series.frames[i + 1])} is offset "
                         f"{lateral[i]:.3g} mm sideways); resample it first")
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > _GAP_REL_TOL * median
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"DICOM series {series.uid} in {series.where!r}: uneven slice spacing (gap of "
                         f"{gaps[i]:.4g} mm between {_name(series.frames[i])} and {_name(series.frames[i + 1])}, "
                         f"typical gap {median:.4g} mm: a missing slice?)")


def _name(frame: _Frame) -> str:
    return repr(frame.path) if frame.frame is None else f"{frame.path!r} frame {frame.frame + 1}"


def series_affine(series: DicomSeries) -> np.ndarray:
    """(4, 4) RAS+ affine of the (X=column, Y=row, Z=slice) index grid of a sorted series."""
    ref = series.frames[0]
    row_spacing, col_spacing = ref.spacing
    normal = np.cross(ref.orientation[:3], ref.orientation[3:])
    if len(series.frames) > 1:
        depth = [f.position @ normal for f in series.frames]
        slice_step = (depth[-1] - depth[0]) / (len(series.frames) - 1)
    else:
        ds = series.datasets[ref.path]
        slice_step = float(getattr(ds, "SpacingBetweenSlices", None) or getattr(ds, "SliceThickness", None) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = ref.orientation[:3] * col_spacing  # along a row: column index grows
    lps[:3, 1] = ref.orientation[3:] * row_spacing  # down a column: row index grows
    lps[:3, 2] = normal * slice_step
    lps[:3, 3] = ref.position
    return _LPS_TO_RAS @ lps


def read_dicom(path: str, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], dict]:
    """Read a DICOM series (folder) or file like :func:`unimri.data.io.read_image`.

    Returns:
        (array (X, Y, Z), affine (4, 4) RAS+, spacing (3,), meta). ``array`` is float32
        when any slice has a rescale slope ≠ 1 or intercept ≠ 0, else the stored dtype.
        ``meta["dicom"]`` holds the :class:`DicomSeries` (for :func:`write_seg`).
    """
    pydicom = _pydicom()
    series = load_series(path, series_uid)
    rescaled = any(f.slope != 1.0 or f.intercept != 0.0 for f in series.frames)
    check_declared_shape(path, series.shape, 4 if rescaled else series.itemsize)
    volume = None
    pixels_of: dict[str, np.ndarray] = {}
    for z, frame in enumerate(series.frames):
        if frame.path not in pixels_of:
            if frame.frame is None and pixels_of:
                pixels_of.clear()  # single-frame files: keep one decoded file at a time
            try:
                ds = pydicom.dcmread(frame.path)
                pixels = ds.pixel_array
            except Exception as exc:  # noqa: BLE001 - truncated pixel data, missing decoder plugin...
                raise ValueError(f"DICOM file {frame.path!r}: cannot decode pixel data (truncated, or a "
                                 f"compressed transfer syntax without its decoder?): "
                                 f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
            pixels_of[frame.path] = pixels
        pixels = pixels_of[frame.path]
        plane = pixels if frame.frame is None else pixels[frame.frame]
        if plane.shape != (series.rows, series.columns):
            raise ValueError(f"DICOM file {frame.path!r}: pixel data is {plane.shape}, header says "
                             f"{series.rows}x{series.columns}")
        if volume is None:
            volume = np.empty(series.shape, dtype=np.float32 if rescaled else plane.dtype)
        values = plane.T  # (rows, columns) -> (X=column, Y=row)
        volume[:, :, z] = values * np.float32(frame.slope) + np.float32(frame.intercept) if rescaled else values
    affine = series_affine(series)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))

    meta = {"format": "dicom", "path": os.fspath(path), "header_zooms": spacing, "dtype": str(volume.dtype),
            "orientation": orientation_code(affine), "series_uid": series.uid, "dicom": series}
    return volume, affine, spacing, meta


def _segment_descriptions(hd, labels: Sequence[int], names: Sequence[str] | None):
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="unimri", version=_unimri_version(), family=codes.cid7162.ArtificialIntelligence)
    out = []
    for label in labels:
        name = names[label] if names is not None and label < len(names) else f"class {label}"
        out.append(hd.seg.SegmentDescription(
            segment_number=int(label), segment_label=str(name),
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    return out


def _unimri_version() -> str:
    try:
        from importlib.metadata import version

        return version("unimri")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0"


def write_seg(path: str, labels: np.ndarray, source: str | DicomSeries, *, class_names: Sequence[str] | None = None,
              series_uid: str | None = None) -> str:
    """Write ``labels`` (X, Y, Z) on ``source``'s grid as a DICOM SEG file, atomically.

    Args:
        path: the output file (``.dcm``).
        labels: integer label volume with the source series' shape (X, Y, Z); each value
            c > 0 becomes segment c (named ``class_names[c]`` when given).
        source: the DICOM series folder/file the labels were computed from (or its
            :class:`DicomSeries`); the SEG references its instances and shares its
            frame of reference and geometry.

    Raises:
        ValueError when the shape differs from the source's or labels are negative.
    """
    from unimri._atomic import atomic_write_path

    hd = _highdicom()
    pydicom = _pydicom()
    series = source if isinstance(source, DicomSeries) else load_series(source, series_uid)
    labels = np.asarray(labels)
    if labels.shape != series.shape:
        raise ValueError(f"labels: shape {labels.shape} differs from the DICOM source's grid {series.shape} "
                         f"(columns, rows, slices) of {series.where!r}")
    if labels.dtype.kind not in "biu" or (labels.size and labels.min() < 0):
        raise ValueError(f"labels: expected non-negative integer labels, got dtype {labels.dtype}")
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    if not present:
        present = [1]  # an empty segmentation still describes segment 1
    # highdicom needs the full source datasets (it copies patient/study attributes).
    paths = list(dict.fromkeys(f.path for f in series.frames))
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    multi = any(f.frame is not None for f in series.frames)
    stack = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slices, rows, columns)
    if multi:
        if len(paths) != 1:
            raise ValueError(f"DICOM source {series.where!r}: a series of several multi-frame files cannot "
                             f"be referenced by one SEG")
        frame_order = np.argsort([f.frame for f in series.frames])  # back to the file's frame order
        stack = stack[frame_order]
    else:
        by_path = {f.path: z for z, f in enumerate(series.frames)}
        stack = stack[[by_path[p] for p in paths]]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stack.astype(np.uint16 if max(present) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd, present, class_names),
        series_instance_uid=hd.UID(), series_number=9000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="unimri", manufacturer_model_name="unimri", software_versions=_unimri_version(),
        device_serial_number="0", omit_empty_frames=False)
    return atomic_write_path(os.fspath(path), lambda tmp: seg.save_as(tmp), suffix=".dcm")


def read_seg(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a DICOM SEG file back: (labels (X, Y, Z) uint16, affine (4, 4) RAS+).

    Each frame's segment number and plane position place it in the volume; the grid is
    rebuilt from the frames' positions as for an image series (so every slice position
    must have a frame, as :func:`write_seg` writes).
    """
    pydicom = _pydicom()
    ds = pydicom.dcmread(os.fspath(path))
    if getattr(ds, "Modality", None) != "SEG":
        raise ValueError(f"DICOM file {path!r} is not a segmentation (Modality {getattr(ds, 'Modality', None)!r})")
    frames = _frames_of(ds, os.fspath(path))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    # With one segment highdicom states it once, in the shared functional groups.
    segment = [int((_first(g, "SegmentIdentificationSequence") or _first(shared, "SegmentIdentificationSequence"))
                   .ReferencedSegmentNumber) for g in per_frame]
    check_declared_shape(path, (int(ds.Rows), int(ds.Columns), len(frames)), 1)
    pixels = ds.pixel_array.reshape(len(frames), int(ds.Rows), int(ds.Columns))
    # One series per segment; the first segment's frames define the grid.
    first = [f for f, s in zip(frames, segment) if s == segment[0]]
    series = DicomSeries(str(ds.SeriesInstanceUID), first, int(ds.Rows), int(ds.Columns), 1, {first[0].path: ds},
                         os.fspath(path))
    _sort_and_check(series)
    affine = series_affine(series)
    ref = series.frames[0]
    normal = np.cross(ref.orientation[:3], ref.orientation[3:])
    depth = np.array([f.position @ normal for f in series.frames])
    labels = np.zeros((series.columns, series.rows, len(series.frames)), dtype=np.uint16)
    for frame, seg_number, plane in zip(frames, segment, pixels):
        z = int(np.argmin(np.abs(depth - frame.position @ normal)))
        labels[:, :, z][plane.T > 0] = seg_number
    return labels, affine
