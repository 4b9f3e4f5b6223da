"""Inference on whole cases: 2D models slice by slice, 3D models with a sliding window.

Each slice/window is resized to the size the model was last trained at (the final
progressive-resizing stage), run, and its logits resized back to the native grid, so
the output always has the input's shape. Probabilities of overlapping windows are
averaged.
"""
from __future__ import annotations

import os
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from unimri.train.precision import autocast_for
from unimri.train.resize import resize, resize_logits


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
        x = resize(batch.to(device), spec.size)
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


def as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))


_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_to_channels_first(array: np.ndarray, spec: InferenceSpec, path: str = "input") -> np.ndarray:
    """A file's array (see unimri.data.read_image) -> (C, *S) float32 for this model.

    Volumes (X, Y, Z) get one channel, (X, Y, Z, T) use T as channels; 2D image files
    (PNG/JPEG/BMP/TIFF) give (H, W) -> one channel and RGB (H, W, 3) -> grey for
    one-channel models.
    """
    a = np.asarray(array, dtype=np.float32)
    picture = path.lower().endswith(_PICTURE_SUFFIXES)
    if picture and a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(-1, keepdims=True) if spec.in_channels == 1 else a[..., :3]
        a = np.moveaxis(a, -1, 0)
    elif a.ndim in (2, 3):
        a = a[None]
    elif a.ndim == 4:
        a = np.moveaxis(a, -1, 0)
    else:
        raise ValueError(f"{path}: expected a 2D image or a 3D/4D volume, got array shape {a.shape}")
    if a.shape[0] != spec.in_channels:
        raise ValueError(f"{path}: the model takes {spec.in_channels} channel(s), the file gives "
                         f"{a.shape[0]} (array shape {np.asarray(array).shape})")
    return np.ascontiguousarray(a)


def load_trained_model(path: str, device: torch.device | str = "cpu",
                       expected_model: str | None = None) -> tuple[nn.Module, InferenceSpec, dict[str, Any]]:
    """(model in eval mode, its InferenceSpec, the checkpoint dict) from a unimri checkpoint.

    ``expected_model``: if given, a checkpoint made for another backbone raises ValueError.
    """
    from unimri.train import registry
    from unimri.train.checkpoint import load_checkpoint, load_weights

    state = load_checkpoint(path)
    if "model_spec" not in state or "inference" not in state:
        raise ValueError(f"checkpoint: {path!r} holds no model spec (not written by unimri train)")
    spec = state["model_spec"]
    if expected_model is not None and spec["name"] != expected_model:
        raise ValueError(f"checkpoint: {path!r} was made for model {spec['name']!r}, not {expected_model!r}")
    model = registry.create_model(spec)
    load_weights(model, state["model"], path)
    return model.to(device).eval(), InferenceSpec.from_dict(state["inference"]), state


def _output_path_for(input_path: str, output: str, many: bool) -> str:
    if not many:
        return output
    name = os.path.basename(input_path.rstrip("/"))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(output, f"{name}_seg.nii.gz")


def predict_path(checkpoint: str, input_path: str, output: str, *, overwrite: bool = False,
                 device: torch.device | str = "cpu", batch_size: int = 8, overlap: float = 0.5,
                 progress: bool = True) -> list[str]:
    """Segment a NIfTI/NRRD/... file, or every image file of a folder, into NIfTI label volumes.

    A file input writes ``output`` (a .nii/.nii.gz path); a folder input writes
    ``output/<name>_seg.nii.gz`` per image. The label volume has the input's spatial
    shape and affine. Every output is checked before anything is written (existing files
    need ``overwrite``) and each is written atomically.
    """
    from tqdm.auto import tqdm

    from unimri.data import Volume, apply_zscore, read_image, write_nifti, zscore_stats

    if not os.path.exists(input_path):
        raise ValueError(f"input: {input_path!r} does not exist")
    many = os.path.isdir(input_path)
    if many:
        inputs = sorted(os.path.join(input_path, f) for f in os.listdir(input_path)
                        if not f.startswith(".") and os.path.isfile(os.path.join(input_path, f)))
        if not inputs:
            raise ValueError(f"input: folder {input_path!r} holds no files")
        if os.path.exists(output) and not os.path.isdir(output):
            raise ValueError(f"output: for a folder input, output must be a folder, got file {output!r}")
    else:
        inputs = [input_path]
        if not output.lower().endswith((".nii", ".nii.gz")):
            raise ValueError(f"output: expected a .nii or .nii.gz path, got {output!r}")
    targets = [_output_path_for(p, output, many) for p in inputs]
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise ValueError(f"output: {existing[0]!r} already exists (and {len(existing) - 1} more); "
                         "pass --overwrite to replace")
    model, spec, _ = load_trained_model(checkpoint, device)
    written = []
    for src, dst in tqdm(list(zip(inputs, targets)), desc="predict", disable=not progress):
        array, affine, spacing, _meta = read_image(src)
        image = image_to_channels_first(array, spec, src)
        if image.ndim - 1 != 3 and spec.spatial_dims == 3:
            raise ValueError(f"input: {src!r} is 2D but the model is 3D")
        if spec.normalize not in (None, "none"):
            case = Volume(image=image, label=None, affine=np.asarray(affine, np.float64),
                          spacing=tuple(spacing), case_id=os.path.basename(src),
                          meta={"modality": spec.modality} if spec.modality else {})
            image = apply_zscore(image, *zscore_stats(case, spec.normalize))
        labels = predict_labels(model, as_tensor(image), spec, device=device, batch_size=batch_size,
                                overlap=overlap).numpy()
        if dst != output or many:
            os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        written.append(write_nifti(dst, labels.astype(np.int16 if spec.num_classes > 127 else np.uint8),
                                   np.asarray(affine, np.float64)))
    return written
