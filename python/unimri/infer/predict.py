"""Prediction of image files with a trained checkpoint (``unimri predict``).

A file or a folder of files is read, checked, normalised as the model was trained,
segmented whole (:mod:`unimri.runtime.inference`) and written with the input's geometry.
"""
from __future__ import annotations

import fnmatch
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from unimri.runtime import registry
from unimri.runtime.inference import (InferenceSpec, predict_labels, predict_probabilities,  # noqa: F401
                                      sliding_windows)
from unimri.train.checkpoint import load_checkpoint, load_weights


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
    state = load_checkpoint(path)
    if "model_spec" not in state or "inference" not in state:
        raise ValueError(f"checkpoint: {path!r} holds no model spec (not written by unimri train)")
    spec = state["model_spec"]
    if expected_model is not None and spec["name"] != expected_model:
        raise ValueError(f"checkpoint: {path!r} was made for model {spec['name']!r}, not {expected_model!r}")
    model = registry.create_model(spec)
    load_weights(model, state["model"], path)
    return model.to(device).eval(), InferenceSpec.from_dict(state["inference"]), state


#: file names that hold labels, not images: never segmented by a folder predict
DEFAULT_LABEL_PATTERNS = ("*_label*", "*_seg*", "*_mask*", "*_attn-*")
#: formats predict writes (.nhdr/.mhd would need a second data file)
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_DEFAULT_OUTPUT = {".nii.gz": ".nii.gz", ".nii": ".nii", ".nrrd": ".nrrd", ".nhdr": ".nrrd",
                   ".mha": ".mha", ".mhd": ".mha"}


def _stem(path: str) -> str:
    from unimri.data.io import suffix_of

    name = os.path.basename(path.rstrip("/"))
    return name[: len(name) - len(suffix_of(name))]


def is_label_file(path: str, patterns: Sequence[str] = DEFAULT_LABEL_PATTERNS) -> bool:
    """Whether the file name (without its suffix, case-insensitive) matches a label pattern."""
    stem = _stem(path).lower()
    return any(fnmatch.fnmatchcase(stem, pattern.lower()) for pattern in patterns)


def output_suffix_for(input_path: str, output_format: str | None = None) -> str:
    """The suffix a prediction of ``input_path`` is written with: ``output_format`` or the input's."""
    from unimri.data.io import IMAGE_2D_SUFFIXES, suffix_of

    if output_format is not None:
        fmt = output_format.lower() if output_format.startswith(".") else "." + output_format.lower()
        if fmt not in OUTPUT_SUFFIXES:
            raise ValueError(f"output_format: expected one of {OUTPUT_SUFFIXES}, got {output_format!r}")
        return fmt
    suffix = suffix_of(input_path)
    return ".png" if suffix in IMAGE_2D_SUFFIXES else _DEFAULT_OUTPUT.get(suffix, ".nii.gz")


def list_inputs(folder: str, label_patterns: Sequence[str] = DEFAULT_LABEL_PATTERNS) -> tuple[list[str], list[str]]:
    """(image files to segment, skipped files) of a folder, both sorted.

    Only files with an image suffix count; label files (``label_patterns``, matched against
    the name without suffix) and hidden files are skipped, so earlier ``*_seg`` outputs in
    the same folder are never segmented again.
    """
    from unimri.data.io import IMAGE_2D_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, suffix_of

    known = NIFTI_SUFFIXES + ITK_SUFFIXES + IMAGE_2D_SUFFIXES
    images, skipped = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if suffix_of(name) in known and not is_label_file(name, label_patterns):
            images.append(path)
        else:
            skipped.append(path)
    return images, skipped


def _output_path_for(input_path: str, output: str, many: bool, output_format: str | None = None) -> str:
    if not many:
        return output
    return os.path.join(output, f"{_stem(input_path)}_seg{output_suffix_for(input_path, output_format)}")


@dataclass
class _CheckedInput:
    """One input file, read and checked (the first pass of :func:`predict_path`)."""

    path: str
    image: np.ndarray  # (C, *S) float32, normalised
    affine: np.ndarray
    spacing: tuple[float, ...]
    warning: str | None


def _prepare_input(src: str, spec: InferenceSpec, replace_nonfinite: float | None) -> _CheckedInput:
    """Read ``src`` and make it a normalised model input; ValueError naming ``src`` if it cannot be."""
    from unimri.data import Volume, apply_zscore, check_finite, intensity_mismatch, read_image, zscore_stats

    array, affine, spacing, _meta = read_image(src)
    image = image_to_channels_first(array, spec, src)
    if image.ndim - 1 != 3 and spec.spatial_dims == 3:
        raise ValueError(f"input: {src!r} is 2D (shape {array.shape}) but the model is 3D")
    image = check_finite(image, f"input {src!r}", replace_nonfinite)
    warning = intensity_mismatch(spec.intensity, image, f"input {src!r}")
    if spec.normalize not in (None, "none"):
        case = Volume(image=image, label=None, affine=np.asarray(affine, np.float64),
                      spacing=tuple(spacing)[: image.ndim - 1], case_id=os.path.basename(src),
                      meta={"modality": spec.modality} if spec.modality else {})
        image = apply_zscore(image, *zscore_stats(case, spec.normalize))
    return _CheckedInput(src, image, np.asarray(affine, np.float64), tuple(spacing), warning)


def _check_output_path(output: str, input_path: str) -> None:
    from unimri.data.io import IMAGE_2D_SUFFIXES, suffix_of

    suffix = suffix_of(output)
    allowed = OUTPUT_SUFFIXES + ((".png",) if suffix_of(input_path) in IMAGE_2D_SUFFIXES else ())
    if suffix not in allowed:
        raise ValueError(f"output: expected a path ending in one of {allowed}, got {output!r}")


def predict_path(checkpoint: str, input_path: str, output: str, *, overwrite: bool = False,
                 device: torch.device | str = "cpu", batch_size: int = 8, overlap: float = 0.5,
                 progress: bool = True, output_format: str | None = None,
                 label_patterns: Sequence[str] = DEFAULT_LABEL_PATTERNS,
                 replace_nonfinite: float | None = None, save_attention: bool = False) -> list[str]:
    """Segment an image file, or every image file of a folder, into label files.

    A file input writes ``output``, whose suffix (.nii, .nii.gz, .nrrd, .mha; .png for 2D
    pictures) picks the format. A folder input writes ``output/<name>_seg<suffix>`` per
    image, the suffix being ``output_format`` or else the input's own format; only image
    files are considered and label files (``label_patterns``, e.g. ``*_seg*``) are skipped,
    so rerunning into the input folder does not segment earlier outputs. The label volume
    has the input's spatial shape and geometry (a 4D input's first three axes).

    Nothing is written until every input has been read and checked (readable, right
    channel count, no NaN/inf voxels unless ``replace_nonfinite`` gives a value, the
    outputs free unless ``overwrite``); each output is written atomically. Inputs whose
    intensities lie far outside the training data's raise a UserWarning.

    ``save_attention``: also write each attention gate's map, from the same forward passes
    as the labels (:func:`unimri.infer.attention.predict_with_attention`), one file per gate
    next to each label file (:func:`attention_path`): float32 α in [0, 1] with the label
    file's shape, geometry and format (PNG outputs: round(255·α) as 8-bit grey).
    """
    from tqdm.auto import tqdm

    from unimri.data import write_image

    if not os.path.exists(input_path):
        raise ValueError(f"input: {input_path!r} does not exist")
    many = os.path.isdir(input_path)
    if many:
        inputs, skipped = list_inputs(input_path, label_patterns)
        if not inputs:
            raise ValueError(f"input: folder {input_path!r} holds no image files to segment "
                             f"({len(skipped)} other or label file(s) skipped)")
        if os.path.exists(output) and not os.path.isdir(output):
            raise ValueError(f"output: for a folder input, output must be a folder, got file {output!r}")
        output_suffix_for(inputs[0], output_format)  # checks output_format
    else:
        inputs = [input_path]
        if output_format is not None:
            raise ValueError("output_format: applies to folder inputs; for a file the output's suffix "
                             "picks the format")
        _check_output_path(output, input_path)
    targets = [_output_path_for(p, output, many, output_format) for p in inputs]
    clashes = sorted({t for t in targets if targets.count(t) > 1})
    if clashes:
        raise ValueError(f"output: several inputs would be written to {clashes[0]!r} (e.g. the same case "
                         f"as .nii.gz and .nrrd); pass another output format or separate them")
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ValueError(f"output: {existing[0]!r} already exists{more}; pass --overwrite to replace")
    model, spec, _ = load_trained_model(checkpoint, device)
    if save_attention:
        _check_attention_outputs(model, targets, overwrite)
    problems = []
    for src in tqdm(inputs, desc="check inputs", disable=not progress or len(inputs) < 2, leave=False):
        try:
            checked = _prepare_input(src, spec, replace_nonfinite)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if checked.warning:
            warnings.warn(checked.warning, UserWarning, stacklevel=2)
    if problems:
        head = f"{len(problems)} of {len(inputs)} input(s) cannot be segmented; nothing was written:\n  "
        raise ValueError(head + "\n  ".join(problems))
    written = []
    for src, dst in tqdm(list(zip(inputs, targets)), desc="predict", disable=not progress):
        checked = _prepare_input(src, spec, replace_nonfinite)  # read again: memory stays one case
        maps: dict[str, torch.Tensor] = {}
        if save_attention:
            from unimri.infer.attention import predict_with_attention

            probs, maps = predict_with_attention(model, as_tensor(checked.image), spec, device=device,
                                                 batch_size=batch_size, overlap=overlap)
            labels = probs.argmax(0).numpy()
        else:
            labels = predict_labels(model, as_tensor(checked.image), spec, device=device, batch_size=batch_size,
                                    overlap=overlap).numpy()
        dtype = np.int16 if spec.num_classes > 255 else np.uint8
        written.append(write_image(dst, labels.astype(dtype), checked.affine, dtype=dtype))
        for name, alpha in maps.items():
            written.append(_write_attention(attention_path(dst, name), alpha.numpy(), checked.affine))
    return written


def attention_path(label_path: str, gate: str) -> str:
    """Where ``predict --save-attention`` writes ``gate``'s map of a label file:
    ``seg.nii.gz`` + ``skip_level0/gate0`` -> ``seg_attn-skip_level0-gate0.nii.gz``."""
    from unimri.data.io import suffix_of
    from unimri.infer.attention import file_safe

    suffix = suffix_of(label_path)
    return f"{label_path[: len(label_path) - len(suffix)]}_attn-{file_safe(gate)}{suffix}"


def _check_attention_outputs(model: nn.Module, targets: Sequence[str], overwrite: bool) -> None:
    """ValueError when the model has no attention modules, or (without ``overwrite``) when an
    attention file of one of ``targets`` already exists."""
    import glob

    from unimri.infer.attention import attention_modules

    if not attention_modules(model):
        raise ValueError("save_attention: the checkpoint's model has no attention modules "
                         "(it was trained without --attention)")
    if overwrite:
        return
    from unimri.data.io import suffix_of

    for target in targets:
        suffix = suffix_of(target)
        found = sorted(glob.glob(glob.escape(target[: len(target) - len(suffix)]) + "_attn-*" + glob.escape(suffix)))
        if found:
            raise ValueError(f"output: attention map {found[0]!r} already exists; pass --overwrite to replace")


def _write_attention(path: str, alpha: np.ndarray, affine: np.ndarray) -> str:
    """One gate's map (*S) in [0, 1]: float32, or 8-bit grey (round(255·α)) for 2D picture formats."""
    from unimri.data import write_image
    from unimri.data.io import IMAGE_2D_SUFFIXES, suffix_of

    if suffix_of(path) in IMAGE_2D_SUFFIXES:
        return write_image(path, np.rint(np.clip(alpha, 0, 1) * 255).astype(np.uint8), affine)
    return write_image(path, alpha.astype(np.float32), affine, dtype=np.float32)
