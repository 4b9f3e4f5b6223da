"""Resizing for progressive resizing: images, soft label targets and logits.

Shrinking uses area averaging (adaptive average pooling, whose windows cover every input
pixel), so a label map resized as a one-hot tensor becomes a *soft* target in which no
structure vanishes: a one-pixel lesion downsampled 4x survives as a pixel of 1/16 lesion
(nearest-neighbour resizing of the integer map would usually drop it). For integer
shrink factors the class fractions are preserved exactly. Growing uses (bi/tri)linear
interpolation, which keeps the class fractions summing to one. An axis that shrinks
while another grows is handled in two steps (area down, then linear up).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def fit_long_side(native: Sequence[int], long_side: int) -> tuple[int, ...]:
    """The shape with the aspect ratio of ``native`` whose longest axis is ``long_side``.

    E.g. (45, 120) at 64 -> (24, 64). Each axis is rounded and at least 1; a square
    ``native`` gives the cube of ``long_side``.
    """
    native = tuple(int(n) for n in native)
    if not native or min(native) < 1:
        raise ValueError(f"native: expected positive sizes, got {native}")
    scale = int(long_side) / max(native)
    return tuple(max(1, int(round(n * scale))) for n in native)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a batch ``x`` (B, C, *S) to (B, C, *size); float dtypes only.

    Area averaging on the axes that shrink, linear interpolation
    (``align_corners=False``) on those that grow; returns ``x`` itself if the size matches.
    """
    if not x.is_floating_point():
        raise TypeError(f"resize: x must be a floating tensor, got dtype {x.dtype}")
    spatial = tuple(x.shape[2:])
    size = tuple(int(s) for s in size)
    if len(size) != len(spatial):
        raise ValueError(f"resize: size {size} has {len(size)} axes but x (shape {tuple(x.shape)}) "
                         f"has {len(spatial)} spatial axes")
    if size == spatial:
        return x
    middle = tuple(min(a, b) for a, b in zip(spatial, size))
    if middle != spatial:
        x = F.interpolate(x, size=middle, mode="area")
    if middle != size:
        x = F.interpolate(x, size=size, mode=_LINEAR[len(size)], align_corners=False)
    return x


def soft_labels(label: torch.Tensor, num_classes: int, size: Sequence[int] | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer labels (B, *S) -> soft one-hot targets (B, num_classes, *size) summing to 1.

    Labels outside [0, num_classes) raise a ValueError (naming the values found).
    """
    if label.is_floating_point():
        raise TypeError(f"soft_labels: label must hold integer classes, got dtype {label.dtype}")
    if label.numel():
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"soft_labels: label values must lie in [0, {num_classes}), got [{lo}, {hi}]")
    onehot = F.one_hot(label.long(), num_classes).movedim(-1, 1).to(dtype)
    return onehot if size is None else resize(onehot, size)


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits (B, C, *S) back to a case's native grid (B, C, *size), linear interpolation."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode=_LINEAR[len(size)], align_corners=False)
