"""Image readers and writers: NIfTI (nibabel), NRRD/MetaImage (SimpleITK), 2D (Pillow).

Every reader returns the voxel array with its geometry: a (4, 4) affine mapping voxel
indices to RAS+ world millimetres (the NIfTI convention; ITK's LPS is converted), and
the spacing per axis. 3D arrays are indexed (x, y, z) in file order for every format
(SimpleITK's (z, y, x) arrays are transposed). 2D images are (H, W) or (H, W, 3).
The optional libraries are imported on first use; a missing one raises ImportError
naming the pip package. Every reader checks the grid its header declares against
:mod:`unimri.data.limits` before any voxel data is read or decompressed.
"""
from __future__ import annotations

import gzip
import os
import re
from typing import Any

import numpy as np

from unimri._atomic import atomic_write_path

from .limits import check_declared_shape
from .volume import orientation_code, spacing_from_affine

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NIfTI extensions lie between the header and the voxel data; nibabel reads them whole,
# so a header whose data offset lies further than this is refused before nibabel opens it
_MAX_NIFTI_VOX_OFFSET = 64 * 2**20


def _require(module: str, pip_name: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs the optional package '{pip_name}': pip install {pip_name} "
                          f"(or pip install 'unimri[io]')") from exc


def suffix_of(path: str) -> str:
    """Lower-case file suffix, with .nii.gz kept whole."""
    name = os.path.basename(path).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(name)[1]


def read_image(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], dict[str, Any]]:
    """Read an image file.

    Returns:
        (array, affine (4, 4) float64, spacing per spatial axis, header_meta). ``array``
        keeps the stored dtype: 3D (X, Y, Z) or 4D (X, Y, Z, T) for volumes, (H, W) or
        (H, W, 3) for 2D images.

    Raises:
        ValueError naming the file if it is missing, truncated, corrupt or of an unknown type.
    """
    path = os.fspath(path)
    from .dicom import is_dicom_path, read_dicom

    if is_dicom_path(path):  # a DICOM series folder or a .dcm file
        return read_dicom(path)
    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist")
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in ITK_SUFFIXES:
        return _read_itk(path)
    if suffix in IMAGE_2D_SUFFIXES:
        return _read_2d(path)
    raise ValueError(f"image file {path!r}: unknown type {suffix!r}; expected one of "
                     f"{NIFTI_SUFFIXES + ITK_SUFFIXES + IMAGE_2D_SUFFIXES}")


def _check_nifti_header(nib, path: str) -> None:
    """Parse the NIfTI-1/2 header alone and refuse an oversized grid or data offset."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"cannot read NIfTI file {path!r} (truncated or corrupt?): {exc}") from exc
    header = None
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        size = cls.template_dtype.itemsize
        if len(raw) < size:
            continue
        for order in ("<", ">"):
            if int(np.frombuffer(raw[:4], dtype=order + "i4")[0]) == size:
                header = cls(raw[:size], endianness=order, check=False)
    if header is None:
        return  # not a NIfTI header nibabel knows; nibabel's own error names the problem
    shape = header.get_data_shape()
    check_declared_shape(path, shape, header.get_data_dtype().itemsize)
    offset = float(header["vox_offset"])
    if not 0 <= offset <= _MAX_NIFTI_VOX_OFFSET:
        raise ValueError(f"image file {path!r}: header puts the voxel data at byte {offset:.0f}, beyond the "
                         f"{_MAX_NIFTI_VOX_OFFSET:,} bytes a NIfTI header and its extensions may take")


def _read_nifti(path: str):
    nib = _require("nibabel", "nibabel", "reading NIfTI")
    _check_nifti_header(nib, path)
    try:
        img = nib.load(path)
        array = np.asanyarray(img.dataobj)  # forces the read: truncation fails here, not later
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"cannot read NIfTI file {path!r} (truncated or corrupt?): {reason}") from exc
    affine = np.asarray(img.affine, dtype=np.float64)
    spatial = min(array.ndim, 3)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:spatial])
    meta = {"format": "nifti", "path": path, "header_zooms": zooms,
            "dtype": str(img.get_data_dtype()),
            "orientation": "".join(nib.aff2axcodes(affine))}
    return array, affine, zooms, meta


def _itk_reason(exc: Exception) -> str:
    """ITK's multi-line trace reduced to its last, most specific line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    last = re.sub(r"^(\[\w+\]\s*)+", "", last)  # "[nrrd] " prefixes
    last = re.sub(r"^_?\w+:\s+", "", last)  # the C function that failed
    return last


def _read_itk(path: str):
    sitk = _require("SimpleITK", "SimpleITK", "reading NRRD/MetaImage")
    warnings_shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK would print its trace to stderr
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        declared = tuple(reader.GetSize()) + ((reader.GetNumberOfComponents(),)
                                              if reader.GetNumberOfComponents() > 1 else ())
        bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        itemsize = int(bits.group(1)) // 8 if bits else 8
    except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's whole trace
        sitk.ProcessObject_SetGlobalWarningDisplay(warnings_shown)
        raise ValueError(f"cannot read image file {path!r} (truncated or corrupt?): "
                         f"{_itk_reason(exc)}") from None
    try:
        check_declared_shape(path, declared, itemsize)
        img = reader.Execute()
        array = sitk.GetArrayFromImage(img)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's whole trace
        raise ValueError(f"cannot read image file {path!r} (truncated or corrupt?): "
                         f"{_itk_reason(exc)}") from None
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(warnings_shown)
    dims = img.GetDimension()
    reverse = tuple(range(dims - 1, -1, -1))  # ITK arrays are (z, y, x[, component])
    if img.GetNumberOfComponentsPerPixel() > 1:
        array = array.transpose(reverse + (dims,))
    else:
        array = array.transpose(reverse)
    # A 4D file (x, y, z, t) keeps the geometry of its first three axes, as 4D NIfTI does;
    # the fourth axis holds channels or time points.
    spatial = min(dims, 3)
    spacing = tuple(float(s) for s in img.GetSpacing()[:spatial])
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dims, dims)[:spatial, :spatial]
    lps = np.eye(4)
    lps[:spatial, :spatial] = direction * np.asarray(spacing)[None, :]
    lps[:spatial, 3] = img.GetOrigin()[:spatial]
    affine = _LPS_TO_RAS @ lps
    meta = {"format": "itk", "path": path, "header_zooms": spacing, "dtype": str(array.dtype),
            "orientation": orientation_code(affine) if spatial == 3 else None}
    return np.ascontiguousarray(array), affine, spacing, meta


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN/inf entries (0 for integer arrays)."""
    array = np.asarray(array)
    if array.dtype.kind not in "fc":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def check_finite(array: np.ndarray, where: str, replace: float | None = None) -> np.ndarray:
    """``array`` unchanged if every value is finite; else ValueError naming ``where`` and the count.

    ``replace``: a number that NaN/inf voxels become instead (a copy is returned).
    """
    bad = count_nonfinite(array)
    if not bad:
        return array
    if replace is None:
        raise ValueError(f"{where}: {bad} of {np.asarray(array).size} voxels are not finite (NaN or inf); "
                         f"fix the file, or replace them explicitly (--replace-nonfinite VALUE, "
                         f"replace_nonfinite=VALUE)")
    value = float(replace)
    if not np.isfinite(value):
        raise ValueError(f"replace_nonfinite: expected a finite number, got {replace!r}")
    return np.where(np.isfinite(array), array, np.asarray(value, dtype=np.asarray(array).dtype))


def _read_2d(path: str):
    pil = _require("PIL.Image", "pillow", "reading 2D images")
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the check below replaces Pillow's
    try:
        with pil.open(path) as im:
            width, height = im.size
            check_declared_shape(path, (height, width, len(im.getbands())), 1)
            im.load()
            mode = im.mode
            if mode in ("P", "LA", "RGBA", "CMYK", "YCbCr"):
                im = im.convert("L" if mode in ("LA",) else "RGB")
            elif mode == "1":
                im = im.convert("L")
            array = np.asarray(im)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read image file {path!r} with Pillow: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    affine = np.eye(4)
    meta = {"format": "2d", "path": path, "mode": mode, "header_zooms": (1.0, 1.0)}
    return array, affine, (1.0, 1.0), meta


def _storage_dtype(array: np.ndarray, dtype: Any | None) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for cand in (np.uint8, np.int16, np.int32):
            if np.iinfo(cand).min <= lo and hi <= np.iinfo(cand).max:
                return np.dtype(cand)
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray, dtype: Any | None = None) -> str:
    """Write ``array`` (X, Y, Z[, T]) with ``affine`` to a .nii/.nii.gz file atomically.

    Integer (label) arrays are stored in the smallest integer type that holds them,
    floats as float32, unless ``dtype`` is given. The header's qform/sform are set from
    ``affine``, so its pixdim (spacing) matches the affine's column norms.
    """
    path = os.fspath(path)
    if suffix_of(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"path must end in .nii or .nii.gz, got {path!r}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got {affine.shape}")
    array = np.asarray(array)
    nib = _require("nibabel", "nibabel", "writing NIfTI")
    stored = array.astype(_storage_dtype(array, dtype), copy=False)
    img = nib.Nifti1Image(stored, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_write_path(path, lambda tmp: nib.save(img, tmp), suffix=suffix_of(path))


def _itk_image(sitk, stored: np.ndarray, affine: np.ndarray):
    """SimpleITK image of ``stored`` (X, Y[, Z[, T]]) with the LPS geometry of RAS ``affine``.

    A 4D array keeps the 3D geometry on its first three axes; the fourth gets spacing 1.
    """
    if stored.ndim not in (2, 3, 4):
        raise ValueError(f"array: expected 2, 3 or 4 axes for an ITK image, got shape {stored.shape}")
    dims = stored.ndim
    spatial = min(dims, 3)
    img = sitk.GetImageFromArray(stored.transpose(tuple(range(dims - 1, -1, -1))), isVector=False)
    lps = _LPS_TO_RAS @ affine
    spacing = spacing_from_affine(affine, spatial)
    direction = np.eye(dims)
    direction[:spatial, :spatial] = lps[:spatial, :spatial] / np.asarray(spacing)[None, :]
    origin = list(lps[:spatial, 3]) + [0.0] * (dims - spatial)
    img.SetSpacing(tuple(spacing) + (1.0,) * (dims - spatial))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection(tuple(direction.ravel().tolist()))
    return img


def write_image(path: str, array: np.ndarray, affine: np.ndarray | None = None,
                dtype: Any | None = None, source: str | None = None) -> str:
    """Write a volume or 2D image by suffix (NIfTI, NRRD/MetaImage, PNG/BMP/JPG), atomically.

    3D arrays are (X, Y, Z) (4D: (X, Y, Z, T)) with a RAS ``affine`` (converted to LPS for
    ITK formats; .nrrd and .mha are written compressed); 2D images (H, W) or (H, W, 3)
    ignore the affine. A ``.dcm`` path writes a DICOM SEG of the label volume on the grid of
    ``source``, the DICOM series it was computed from (:func:`unimri.data.dicom.write_seg`).
    """
    path = os.fspath(path)
    suffix = suffix_of(path)
    array = np.asarray(array)
    if suffix == ".dcm":
        from .dicom import write_seg

        if source is None:
            raise ValueError(f"cannot write {path!r}: a DICOM SEG needs the source DICOM series (source=)")
        return write_seg(path, array, source)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if suffix in NIFTI_SUFFIXES:
        return write_nifti(path, array, affine, dtype)
    if suffix in (".nrrd", ".mha"):  # single-file ITK formats (.mhd needs a second .raw file)
        sitk = _require("SimpleITK", "SimpleITK", "writing NRRD/MetaImage")
        img = _itk_image(sitk, array.astype(_storage_dtype(array, dtype), copy=False), affine)
        return atomic_write_path(path, lambda tmp: sitk.WriteImage(img, tmp, True), suffix=suffix_of(path))
    if suffix in IMAGE_2D_SUFFIXES:
        pil = _require("PIL.Image", "pillow", "writing 2D images")
        if array.ndim not in (2, 3):
            raise ValueError(f"2D image array must be (H, W) or (H, W, 3), got {array.shape}")
        stored = array.astype(np.uint8) if dtype is None else array.astype(dtype)
        return atomic_write_path(path, lambda tmp: pil.fromarray(stored).save(tmp, format=pil.registered_extensions()[suffix]),
                                 suffix=suffix)
    raise ValueError(f"cannot write {path!r}: unsupported suffix {suffix!r}")
