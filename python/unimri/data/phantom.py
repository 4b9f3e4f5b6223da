"""``phantom``: procedural MR-like head images with small lesions (2D and 3D, no download).

Each case is a T1-like axial head: scalp, dark skull, CSF, cortex (grey matter) with a
wavy boundary, white matter, two ventricles; one or more small lesions of variable size,
elongation, boundary irregularity and contrast (partial-volume edges); a smooth
multiplicative bias field; Rician noise. Labels: 0 background, 1 lesion; with
``num_classes >= 3`` class 2 is an "oedema" ring around each class-1 lesion and classes
3.. are further lesion types (hypo-intense). The total labelled fraction is drawn per
case from ``fg_fraction`` (default 1-5 %, the imbalance of the paper's datasets).

Generation is vectorised numpy and deterministic per ``(seed, index)``: the same case
is produced in any process, in any order.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume, affine_from_spacing

DEFAULT_SIZE = {2: 128, 3: 64}
_RING_SCALE = 1.6  # outer radius of the oedema ring relative to its lesion core


def _as_range(value: float | Sequence[float], name: str, lo: float, hi: float) -> tuple[float, float]:
    pair = (float(value), float(value)) if np.isscalar(value) else tuple(float(v) for v in value)
    if len(pair) != 2 or not (lo <= pair[0] <= pair[1] <= hi):
        raise ValueError(f"{name} must be a number or a (low, high) pair within [{lo}, {hi}], got {value!r}")
    return pair


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth random field of ``shape`` (values roughly N(0, 1) at ``cells`` control points)."""
    low = torch.from_numpy(rng.standard_normal((1, 1) + (cells,) * len(shape)).astype(np.float32))
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(low, size=shape, mode=mode, align_corners=True)[0, 0].numpy()


def _rotation(rng: np.random.Generator, dims: int, max_angle: float) -> np.ndarray:
    """Random rotation matrix (dims, dims) with angles up to ``max_angle`` radians per plane."""
    rot = np.eye(dims)
    for a, b in ([(0, 1)] if dims == 2 else [(0, 1), (0, 2), (1, 2)]):
        t = rng.uniform(-max_angle, max_angle)
        plane = np.eye(dims)
        plane[a, a] = plane[b, b] = math.cos(t)
        plane[a, b], plane[b, a] = -math.sin(t), math.sin(t)
        rot = rot @ plane
    return rot


def _ellipsoid_norm(coords: np.ndarray, center: Sequence[float], radii: Sequence[float],
                    rot: np.ndarray | None = None) -> np.ndarray:
    """||R (x - c) / r|| for coords (D, *S): < 1 inside the ellipsoid."""
    d = coords - np.asarray(center, dtype=np.float32).reshape((-1,) + (1,) * (coords.ndim - 1))
    if rot is not None:
        d = np.tensordot(rot.astype(np.float32), d, axes=1)
    r = np.asarray(radii, dtype=np.float32).reshape((-1,) + (1,) * (coords.ndim - 1))
    return np.sqrt(np.sum((d / r) ** 2, axis=0))


def make_phantom(index: int, seed: int = 0, spatial_dims: int = 2,
                 size: int | Sequence[int] | None = None, num_classes: int = 2,
                 fg_fraction: float | Sequence[float] = (0.01, 0.05),
                 num_lesions: int | Sequence[int] = (1, 3), noise: float = 0.03,
                 bias: float = 0.25) -> Volume:
    """One phantom case, deterministic per ``(seed, index)``.

    Args:
        index: case number (>= 0).
        seed: dataset seed.
        spatial_dims: 2 (image (1, H, W)) or 3 (volume (1, X, Y, Z)).
        size: edge length or full spatial shape; default 128 (2D) / 64 (3D).
        num_classes: 2 (background, lesion), 3 (+ oedema ring), or more (+ lesion types).
        fg_fraction: target labelled fraction of the image, a number or (low, high) range
            sampled per case. The realised fraction is close (irregular boundaries, brain
            clipping) but not exact.
        num_lesions: number of lesions or (low, high) range (inclusive).
        noise: Rician noise sigma relative to white-matter intensity (~0.85).
        bias: amplitude of the log bias field (0 disables it).

    Returns:
        Volume with image float32 (1, *S), label int64 (*S), 1 mm spacing, meta
        {"modality": "MR", "dataset": "phantom", "classes": [...], "target_fg_fraction": float,
        "lesions": [{"class": int, "contrast": float}, ...]} (contrast < 0: a dark,
        hypo-intense lesion; a lesion may be overwritten by a later one).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    size = DEFAULT_SIZE[spatial_dims] if size is None else size
    shape = (int(size),) * spatial_dims if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != spatial_dims or min(shape) < 16:
        raise ValueError(f"size must give {spatial_dims} sizes >= 16, got {size!r}")
    fg_lo, fg_hi = _as_range(fg_fraction, "fg_fraction", 0.0, 0.3)
    n_lo, n_hi = _as_range(num_lesions, "num_lesions", 1, 50)
    if noise < 0 or bias < 0:
        raise ValueError(f"noise and bias must be >= 0, got noise={noise}, bias={bias}")

    rng = np.random.default_rng([int(seed), int(index), spatial_dims])
    coords = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape],
                                  indexing="ij"))
    # Anatomy: 2D rows are anterior-posterior, columns left-right; 3D axes x (LR), y (AP), z.
    head_r = np.array([0.92, 0.78] if spatial_dims == 2 else [0.78, 0.92, 0.85])
    head_r = head_r * rng.uniform(0.9, 1.05, spatial_dims)
    head_c = rng.uniform(-0.04, 0.04, spatial_dims)
    head_rot = _rotation(rng, spatial_dims, 0.15)
    r_head = _ellipsoid_norm(coords, head_c, head_r, head_rot)
    wobble = _smooth_field(rng, shape, 9)
    r_brain = r_head + 0.02 * wobble
    r_wm = r_head + 0.05 * _smooth_field(rng, shape, 12)

    image = np.zeros(shape, np.float32)
    image[r_head < 1.0] = 0.9                     # scalp fat
    image[r_head < 0.94] = 0.12                   # skull
    image[r_head < 0.89] = 0.25                   # CSF
    brain = r_brain < 0.85
    image[brain] = 0.6                            # grey matter
    image[r_wm < 0.62] = 0.85                     # white matter
    lr_axis = 1 if spatial_dims == 2 else 0
    for side in (-1, 1):
        vent_c = head_c.copy()
        vent_c[lr_axis] += side * head_r[lr_axis] * rng.uniform(0.12, 0.18)
        vent_r = head_r * np.where(np.arange(spatial_dims) == lr_axis, 0.07, 0.22)
        image[_ellipsoid_norm(coords, vent_c, vent_r * rng.uniform(0.8, 1.2)) < 1] = 0.25
    image += 0.03 * _smooth_field(rng, shape, 24) * brain

    # Lesions: sizes split a target labelled fraction; classes 1 (with ring 2) and 3...
    target = rng.uniform(fg_lo, fg_hi)
    types = [1] + list(range(3, num_classes))
    n_lesions = max(int(rng.integers(int(n_lo), int(n_hi) + 1)), len(types))
    shares = rng.dirichlet(np.full(n_lesions, 2.0))
    label = np.zeros(shape, np.int64)
    grid_area = 2.0 ** spatial_dims  # coords span [-1, 1] per axis
    px = 2.0 / min(shape)             # one pixel in normalised units
    inside = np.argwhere(r_brain < 0.7)
    lesions = []
    for i in range(n_lesions):
        kind = types[i % len(types)]
        ring = kind == 1 and num_classes >= 3
        area = target * shares[i] * grid_area
        r_eq = (area / math.pi) ** 0.5 if spatial_dims == 2 else (3 * area / (4 * math.pi)) ** (1 / 3)
        if ring:
            r_eq /= _RING_SCALE
        elong = rng.uniform(0.6, 1.0, spatial_dims)
        radii = r_eq * elong / np.prod(elong) ** (1 / spatial_dims)
        center = coords[(slice(None),) + tuple(inside[rng.integers(len(inside))])]
        d = _ellipsoid_norm(coords, center, radii, _rotation(rng, spatial_dims, math.pi))
        d = d + 0.25 * _smooth_field(rng, shape, 10)  # irregular boundary
        contrast = rng.uniform(0.25, 0.6) * (1 if (kind == 1 and rng.random() < 0.75) else -1)
        edge = max(px / max(r_eq, px), 0.05)  # partial-volume width, about one pixel
        if ring:
            outer = d / _RING_SCALE
            image += 0.5 * contrast * np.clip((1 - outer) / edge + 0.5, 0, 1) * brain
            label[(outer < 1) & brain & (label == 0)] = 2
        image += contrast * np.clip((1 - d) / edge + 0.5, 0, 1) * brain
        label[(d < 1) & brain] = kind
        lesions.append({"class": int(kind), "contrast": round(float(contrast), 4)})

    if bias > 0:
        image *= np.exp(bias * _smooth_field(rng, shape, 3))
    if noise > 0:
        real = image + rng.normal(0, noise, shape).astype(np.float32)
        imag = rng.normal(0, noise, shape).astype(np.float32)
        image = np.sqrt(real * real + imag * imag)
    names = ["background", "lesion"] + (["oedema"] if num_classes >= 3 else []) + \
        [f"lesion_type{k - 1}" for k in range(3, num_classes)]
    return Volume(image=image[None].astype(np.float32), label=label,
                  affine=affine_from_spacing((1.0,) * spatial_dims), spacing=(1.0,) * spatial_dims,
                  case_id=f"phantom{spatial_dims}d_{seed}_{index:04d}",
                  meta={"modality": "MR", "dataset": "phantom", "classes": names,
                        "target_fg_fraction": float(target), "lesions": lesions})


def phantom_cases(num_cases: int = 40, spatial_dims: int = 2, seed: int = 0, **kwargs) -> list[Volume]:
    """``num_cases`` phantom cases (indices 0..num_cases-1); kwargs go to :func:`make_phantom`."""
    if not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}")
    return [make_phantom(i, seed=seed, spatial_dims=spatial_dims, **kwargs) for i in range(num_cases)]


def _register() -> None:
    from .registry import register_builtin

    register_builtin("phantom", "procedural MR-like heads with small lesions, 2D/3D, "
                     "1-5 % foreground, seeded (no download)")(phantom_cases)


_register()
