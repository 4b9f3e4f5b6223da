"""Running a trained model on whole cases: 2D models slice by slice, 3D models with a sliding window.

Each slice/window is resized to the size the model was last trained at (the final
progressive-resizing stage), run, and its logits resized back to the native grid, so
the output always has the input's shape. Probabilities of overlapping windows are
averaged.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from unimri.runtime.precision import autocast_for
from unimri.runtime.resize import fit_long_side, resize, resize_logits


@dataclass
class InferenceSpec:
    """How a trained model is applied to a raw case (stored in every checkpoint)."""

    spatial_dims: int
    size: tuple[int, ...]
    num_classes: int
    in_channels: int
    slice_axis: int = -1
    patch: tuple[int, ...] | None = None
    normalize: str = "zscore"
    modality: str | None = None
    #: resize each slice/window so its long side is max(size), keeping its aspect ratio;
    #: None takes it from ``size`` (a StageSize), False for checkpoints older than the option
    keep_aspect: bool | None = None
    #: the training data's raw intensity range (unimri.data.intensity_profile), or None
    intensity: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.keep_aspect is None:
            self.keep_aspect = bool(getattr(self.size, "keep_aspect", False))
        self.size = tuple(int(v) for v in self.size)

    def input_size(self, native: Sequence[int]) -> tuple[int, ...]:
        """The size the model runs a slice/window of ``native`` shape at."""
        return fit_long_side(native, max(self.size)) if self.keep_aspect else self.size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["patch"] = None if self.patch is None else list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InferenceSpec":
        d = dict(d)
        d["size"] = tuple(d["size"])
        d["patch"] = None if d.get("patch") is None else tuple(d["patch"])
        d.setdefault("keep_aspect", False)  # checkpoints from before the option squashed
        return cls(**d)


def _window_starts(length: int, window: int, overlap: float) -> list[int]:
    if window >= length:
        return [0]
    step = max(1, int(math.floor(window * (1.0 - overlap))))
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def sliding_windows(shape: Sequence[int], window: Sequence[int], overlap: float) -> Iterator[tuple[slice, ...]]:
    """Slices covering ``shape`` with windows of ``window`` (clipped to the shape)."""
    window = [min(w, s) for w, s in zip(window, shape)]
    per_axis = [_window_starts(s, w, overlap) for s, w in zip(shape, window)]
    for starts in itertools.product(*per_axis):
        yield tuple(slice(st, st + w) for st, w in zip(starts, window))


def _spatial_axis(axis: int, ndim_spatial: int) -> int:
    if not -ndim_spatial <= axis < ndim_spatial:
        raise ValueError(f"slice_axis: expected in [-{ndim_spatial}, {ndim_spatial}), got {axis}")
    return axis % ndim_spatial


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: torch.Tensor, spec: InferenceSpec,
                          device: torch.device | str = "cpu", batch_size: int = 8,
                          overlap: float = 0.5, amp: str = "auto") -> torch.Tensor:
    """Class probabilities (K, *S) float32 on the CPU for one normalised image (C, *S).

    2D models: S = (H, W) runs as one slice; S = (D, H, W) runs slice by slice along
    ``spec.slice_axis``. 3D models: windows of ``spec.patch`` (whole volume if None)
    with the given ``overlap``.
    """
    device = torch.device(device)
    if image.ndim - 1 not in (2, 3):
        raise ValueError(f"image: expected (C, H, W) or (C, D, H, W), got shape {tuple(image.shape)}")
    if image.shape[0] != spec.in_channels:
        raise ValueError(f"image: model expects {spec.in_channels} channel(s), got shape {tuple(image.shape)}")
    model.eval()
    image = image.float()
    spatial = tuple(image.shape[1:])
    ctx = autocast_for(device, amp)

    def run(batch: torch.Tensor, native: Sequence[int]) -> torch.Tensor:
        x = resize(batch.to(device), spec.input_size(batch.shape[2:]))
        with ctx:
            logits = model(x)
        return torch.softmax(resize_logits(logits.float(), native), dim=1).cpu()

    if spec.spatial_dims == 2:
        if len(spatial) == 2:
            return run(image[None], spatial)[0]
        axis = _spatial_axis(spec.slice_axis, 3)
        slices = image.movedim(1 + axis, 0)  # (N, C, a, b)
        native = tuple(slices.shape[2:])
        out = torch.cat([run(slices[i:i + batch_size], native) for i in range(0, slices.shape[0], batch_size)])
        return out.movedim(0, 1 + axis)  # (K, *S)
    if len(spatial) != 3:
        raise ValueError(f"image: a 3D model needs (C, D, H, W), got shape {tuple(image.shape)}")
    window = spec.patch or spatial
    probs = torch.zeros((spec.num_classes, *spatial), dtype=torch.float32)
    count = torch.zeros(spatial, dtype=torch.float32)
    for sl in sliding_windows(spatial, window, overlap):
        crop = image[(slice(None), *sl)][None]
        probs[(slice(None), *sl)] += run(crop, crop.shape[2:])[0]
        count[sl] += 1
    return probs / count


def predict_labels(model: nn.Module, image: torch.Tensor, spec: InferenceSpec, **kw: Any) -> torch.Tensor:
    """Label map (*S) int64: argmax of :func:`predict_probabilities`."""
    return predict_probabilities(model, image, spec, **kw).argmax(0)
