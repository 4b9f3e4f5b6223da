"""The :class:`Volume` record every reader and built-in dataset returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def spacing_from_affine(affine: np.ndarray, spatial_dims: int = 3) -> tuple[float, ...]:
    """Voxel spacing (norm of each of the first ``spatial_dims`` affine columns)."""
    affine = np.asarray(affine, dtype=np.float64)
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :spatial_dims], axis=0))


def affine_from_spacing(spacing: tuple[float, ...] | list[float]) -> np.ndarray:
    """A (4, 4) axis-aligned affine with ``spacing`` on the diagonal (2D: z spacing 1)."""
    diag = list(spacing) + [1.0] * (3 - len(spacing))
    return np.diag(diag + [1.0]).astype(np.float64)


@dataclass
class Volume:
    """One case: image channels, integer label map and its geometry.

    Attributes:
        image: float32 array (C, *S), channels first; S = (H, W) for 2D sources and
            (X, Y, Z) in the file's voxel order for 3D sources.
        label: int64 array (*S) of class indices, or None for unlabelled cases.
        affine: float64 (4, 4) voxel-index -> world (RAS+, millimetres) transform; for 2D
            images the third index is a dummy slice.
        spacing: voxel size per spatial axis, len(S) entries.
        case_id: unique case identifier (used for cross-validation splits).
        meta: free-form information (source file names, modality, class names, ...).
            ``meta["group"]``, when present, names the subject a case belongs to
            (several images of one patient); :func:`kfold_split` keeps groups together.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, ...]
    case_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim not in (3, 4):
            raise ValueError(f"Volume {self.case_id!r}: image must be (C, H, W) or (C, X, Y, Z), "
                             f"got shape {image.shape}")
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        if self.label is not None:
            label = np.asarray(self.label)
            if label.shape != self.image.shape[1:]:
                raise ValueError(f"Volume {self.case_id!r}: label shape {label.shape} does not match "
                                 f"image spatial shape {self.image.shape[1:]}")
            if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
                if not np.all(np.equal(np.mod(label, 1), 0)):
                    raise ValueError(f"Volume {self.case_id!r}: label must hold integer class "
                                     f"indices, got non-integer values of dtype {label.dtype}")
            self.label = np.ascontiguousarray(label, dtype=np.int64)
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Volume {self.case_id!r}: affine must be (4, 4), got {affine.shape}")
        self.affine = affine
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != self.spatial_dims:
            raise ValueError(f"Volume {self.case_id!r}: spacing needs {self.spatial_dims} entries, "
                             f"got {self.spacing}")

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.image.ndim - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[0])

    def foreground_fraction(self) -> float:
        """Fraction of voxels whose label is not background (0); NaN when unlabelled."""
        if self.label is None:
            return float("nan")
        return float(np.count_nonzero(self.label)) / self.label.size

    def __repr__(self) -> str:
        lab = "none" if self.label is None else f"classes {sorted(np.unique(self.label).tolist())}"
        return (f"Volume({self.case_id!r}, image {self.image.shape}, label {lab}, "
                f"spacing {tuple(round(s, 3) for s in self.spacing)})")


def check_label_values(label: np.ndarray, num_classes: int, where: str) -> None:
    """Raise ValueError naming ``where`` if ``label`` holds values outside [0, num_classes)."""
    values = np.unique(label)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(f"{where}: label values {bad.tolist()[:10]} are outside the declared "
                         f"classes 0..{num_classes - 1}")


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter RAS+ axis code of a (4, 4) affine (``nibabel.aff2axcodes``), e.g. "RAS", "LPS".

    Each voxel axis is named after the world axis its column points along most.
    """
    affine = np.asarray(affine, dtype=np.float64)
    columns = affine[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(columns)):
        raise ValueError(f"affine: singular or non-finite voxel axes, got\n{affine}")
    unit = columns / norms
    used: set[int] = set()
    codes = []
    for axis in np.argsort(-np.abs(unit).max(axis=0)):  # most clearly aligned axis first
        order = [w for w in np.argsort(-np.abs(unit[:, axis])) if w not in used]
        world = int(order[0])
        used.add(world)
        codes.append((axis, ("LR", "PA", "IS")[world][int(unit[world, axis] > 0)]))
    return "".join(code for _, code in sorted(codes))
