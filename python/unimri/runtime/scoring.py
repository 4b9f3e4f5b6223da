"""Scoring a model on whole cases: the metric table (IoU, DSC, precision, recall, HD95, ASD).

Each case is predicted whole (:mod:`unimri.runtime.inference`: 2D models slice by slice, 3D
models by sliding window) at its native resolution, or read from a prediction file
(:func:`unimri.infer.evaluate.evaluate_files`), and scored with :class:`unimri.metrics.SegmentationMetrics` on
the foreground classes; a case's score is the mean over the classes present in its
ground truth, the summary the mean over classes of the per-class means over cases. The
surface distances (HD95, ASD) use the case's voxel spacing; a class present in the
ground truth but not predicted scores +inf there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from unimri.runtime import registry
from unimri.runtime.inference import InferenceSpec, predict_labels
from unimri.runtime.metric_names import METRIC_NAMES

#: surface distances in the files' physical units (mm), computed by ``unimri evaluate``
SURFACE_NAMES = ("HD95", "ASD")
_KEYS = {"IoU": "iou", "DSC": "dice", "Precision": "precision", "Recall": "recall"}


@dataclass
class EvalResult:
    """``summary``: {metric: mean over cases}; ``per_case``: one dict per case;
    ``examples``: a few 2D views {"case_id", "image", "label", "prediction"} for overlays."""

    summary: dict[str, float]
    per_case: list[dict[str, Any]]
    examples: list[dict[str, Any]] = field(default_factory=list)
    per_class: dict[str, list[float]] = field(default_factory=dict)


def normalized_image(case: Any, mode: str) -> torch.Tensor:
    """The case's image (C, *S) normalised exactly as the training datasets do."""
    from unimri.data import apply_zscore, zscore_stats

    image = np.asarray(case.image, dtype=np.float32)
    if mode not in (None, "none"):
        image = apply_zscore(image, *zscore_stats(case, mode))
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))


def example_view(image: torch.Tensor, label: np.ndarray, pred: np.ndarray, axis: int,
                 case_id: str) -> dict[str, Any]:
    """A 2D view for an overlay: the case itself (2D) or its slice with most foreground (3D)."""
    img = image[0].numpy()
    if label.ndim == 3:
        ax = axis % 3
        fg = (label > 0).sum(axis=tuple(a for a in range(3) if a != ax))
        k = int(fg.argmax())
        img, label, pred = np.take(img, k, ax), np.take(label, k, ax), np.take(pred, k, ax)
    return {"case_id": case_id, "image": img.astype(np.float32), "label": label.astype(np.int16),
            "prediction": pred.astype(np.int16)}


def evaluate_model(model: nn.Module, cases: Sequence[Any], spec: InferenceSpec,
                   device: torch.device | str = "cpu", normalize: str = "zscore", progress: bool = True,
                   n_examples: int = 3, batch_size: int = 8, surface: bool = False) -> EvalResult:
    """Predict every case whole and score it; see the module docstring.

    ``surface``: also compute HD95 and ASD (slower: a distance transform per case and class).
    """
    from tqdm.auto import tqdm

    if not cases:
        raise ValueError("cases: expected at least one case to evaluate, got none")
    metrics = registry.metrics_object(spec.num_classes)
    per_case, examples = [], []
    for case in tqdm(cases, desc="evaluate", leave=False, disable=not progress):
        if case.label is None:
            raise ValueError(f"cases: case {case.case_id!r} has no label to evaluate against")
        image = normalized_image(case, normalize)
        pred = predict_labels(model, image, spec, device=device, batch_size=batch_size)
        label = torch.from_numpy(np.asarray(case.label, dtype=np.int64))
        per_case.append(score_case(metrics, pred, label, case.case_id, case.spacing if surface else None))
        if len(examples) < n_examples and (case.label > 0).any():
            examples.append(example_view(image, case.label, pred.numpy(), spec.slice_axis, case.case_id))
    return summarize_cases(metrics, per_case, examples, surface)


def score_case(metrics: Any, pred: torch.Tensor, label: torch.Tensor, case_id: str,
           spacing: Sequence[float] | None) -> dict[str, Any]:
    """One case's row; ``spacing`` given: HD95/ASD per class too (kept in ``_surface``)."""
    scores = metrics(pred[None], label[None])
    row: dict[str, Any] = {"case_id": case_id}
    for name in METRIC_NAMES:
        values = scores[_KEYS[name]][0]
        row[name] = float(values.nanmean()) if not torch.isnan(values).all() else float("nan")
    if spacing is not None:
        from unimri.metrics import average_surface_distance, hausdorff_distance_95

        present = torch.stack([(label == c).any() for c in range(1, metrics.num_classes)])
        for name, fn in zip(SURFACE_NAMES, (hausdorff_distance_95, average_surface_distance)):
            values = fn(pred[None], label[None], num_classes=metrics.num_classes, spacing=tuple(spacing))[0]
            values = torch.where(present, values, float("nan"))  # classes absent from the truth
            row[f"_{name}"] = [float(v) for v in values]
            row[name] = float(values.nanmean()) if present.any() else float("nan")
    return row


def summarize_cases(metrics: Any, per_case: list[dict[str, Any]], examples: list[dict[str, Any]],
            surface: bool) -> EvalResult:
    agg = metrics.aggregate()
    summary = {name: float(agg[_KEYS[name]]) for name in METRIC_NAMES}
    per_class = {name: [float(v) for v in agg[f"{_KEYS[name]}_per_class"]] for name in METRIC_NAMES}
    if surface:
        for name in SURFACE_NAMES:
            table = torch.tensor([row.pop(f"_{name}") for row in per_case], dtype=torch.float64)
            class_means = table.nanmean(0)
            per_class[name] = [float(v) for v in class_means]
            summary[name] = float(class_means.nanmean())
    return EvalResult(summary, per_case, examples, per_class)


def metric_table(result: EvalResult, class_names: Sequence[str] | None = None) -> str:
    """Markdown: one row per case, then per-class means and the overall mean (HD95/ASD in
    the files' units, when computed)."""
    names = list(METRIC_NAMES) + [m for m in SURFACE_NAMES if m in result.summary]
    lines = ["| case | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in result.per_case:
        lines.append(f"| {row['case_id']} | " + " | ".join(f"{row[m]:.3f}" for m in names) + " |")
    n_fg = len(next(iter(result.per_class.values()), []))
    for c in range(n_fg):
        name = class_names[c + 1] if class_names and len(class_names) > c + 1 else f"class {c + 1}"
        lines.append(f"| mean: {name} | " + " | ".join(f"{result.per_class[m][c]:.3f}" for m in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{result.summary[m]:.3f}**" for m in names) + " |")
    return "\n".join(lines) + "\n"
