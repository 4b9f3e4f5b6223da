"""MONAI-style cumulative segmentation metrics: call per batch, ``aggregate()``, ``reset()``."""
from __future__ import annotations

from typing import Sequence

import torch

from ._inputs import drop_background, label_map_to_one_hot, _squeeze_channel
from .confusion import CONFUSION_METRICS, confusion_counts, metric_from_counts
from .surface import average_surface_distance, hausdorff_distance_95

SURFACE_METRICS = ("hd95", "asd")
METRIC_NAMES = CONFUSION_METRICS + SURFACE_METRICS


class SegmentationMetrics:
    """Accumulates per-case scores over batches and summarises them.

    Args:
        num_classes: number of classes C including the background (>= 2; a binary task is 2).
        include_background: score class 0 too (default False, as MONAI's surface metrics).
        ignore_empty: a class absent from a case's target scores NaN for that case and
            is left out of that class's mean and std (see :mod:`unimri.metrics.confusion`).
        metrics: names from ``METRIC_NAMES`` ("iou", "dice", "precision", "recall",
            "specificity", "hd95", "asd").
        spacing: voxel spacing for the surface metrics (one number or one per dim).

    ``__call__(y_pred, y)``: ``y_pred`` is logits (B, C, *S) float (argmax over C; with a
    single channel, ``logit > 0`` is class 1) or an integer label map (B, *S) / (B, 1, *S);
    ``y`` is an integer label map or a one-hot (B, C, *S). Returns this batch's per-case
    scores {name: float64 (B, C')} with C' = C or C - 1.

    ``aggregate()`` returns, for each metric ``m``:
    ``m`` (float: mean over classes of the per-class means), ``m_per_class`` (C',),
    ``m_std_per_class`` (C',) (population std over cases), ``m_std`` (float: std over cases
    of the per-case class mean), ``m_per_case`` (N, C'), and for the overlap metrics
    ``m_micro_per_class`` (C', from counts summed over cases) and ``m_micro`` (float, from
    counts summed over cases and classes); plus ``num_cases``. Means skip NaN.
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        ignore_empty: bool = True,
        metrics: Sequence[str] = ("iou", "dice", "precision", "recall"),
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
        if isinstance(metrics, str):
            metrics = (metrics,)
        unknown = [m for m in metrics if m not in METRIC_NAMES]
        if unknown or not metrics:
            raise ValueError(f"metrics must be a non-empty subset of {METRIC_NAMES}, got {tuple(metrics)}")
        self.num_classes = num_classes
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.metrics = tuple(metrics)
        self.spacing = spacing
        self.reset()

    @property
    def class_indices(self) -> list[int]:
        """The class index of each scored column."""
        return list(range(0 if self.include_background else 1, self.num_classes))

    def reset(self) -> None:
        self._counts: list[torch.Tensor] = []
        self._surface: dict[str, list[torch.Tensor]] = {m: [] for m in self.metrics if m in SURFACE_METRICS}

    def _labels(self, y_pred: torch.Tensor) -> torch.Tensor:
        if not y_pred.is_floating_point():
            return _squeeze_channel(y_pred)
        if y_pred.dim() < 4:
            raise ValueError(f"y_pred logits must be (B, C, *S) with 2 or 3 spatial dims, got {tuple(y_pred.shape)}")
        channels = y_pred.shape[1]
        if channels == 1 and self.num_classes == 2:
            return (y_pred[:, 0] > 0).long()
        if channels != self.num_classes:
            raise ValueError(
                f"y_pred logits must have num_classes={self.num_classes} channels (or 1 for a binary task), "
                f"got shape {tuple(y_pred.shape)}"
            )
        return y_pred.argmax(dim=1)

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = label_map_to_one_hot(self._labels(y_pred.detach()), self.num_classes, "y_pred")
        if y.is_floating_point() or y.dtype == torch.bool:
            target = y.detach().bool() if y.dtype == torch.bool else y.detach() >= 0.5
        else:
            target = label_map_to_one_hot(_squeeze_channel(y.detach()), self.num_classes, "y")
        if pred.shape != target.shape:
            raise ValueError(
                f"y_pred and y must describe the same cases and shape; got one-hot {tuple(pred.shape)} "
                f"and {tuple(target.shape)}"
            )
        pred, target = drop_background(pred.cpu(), target.cpu(), self.include_background)
        counts = confusion_counts(pred, target)
        self._counts.append(counts)
        batch: dict[str, torch.Tensor] = {}
        for m in self.metrics:
            if m in CONFUSION_METRICS:
                batch[m] = metric_from_counts(m, counts, self.ignore_empty)
            else:
                fn = hausdorff_distance_95 if m == "hd95" else average_surface_distance
                score = fn(pred, target, include_background=True, spacing=self.spacing)
                if self.ignore_empty:
                    score = torch.where(counts[..., 0] + counts[..., 3] > 0, score, float("nan"))
                self._surface[m].append(score)
                batch[m] = score
        return batch

    def aggregate(self) -> dict[str, torch.Tensor | float]:
        """Summary over every case seen since the last ``reset()`` (see the class docstring)."""
        if not self._counts:
            raise RuntimeError("SegmentationMetrics.aggregate() called before any batch was added")
        counts = torch.cat(self._counts)
        out: dict[str, torch.Tensor | float] = {"num_cases": int(counts.shape[0])}
        for m in self.metrics:
            if m in CONFUSION_METRICS:
                per_case = metric_from_counts(m, counts, self.ignore_empty)
                out[f"{m}_micro_per_class"] = metric_from_counts(m, counts.sum(0), self.ignore_empty)
                out[f"{m}_micro"] = float(metric_from_counts(m, counts.sum((0, 1)), self.ignore_empty))
            else:
                per_case = torch.cat(self._surface[m])
            out.update(_summaries(m, per_case))
        return out


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    mean = x.nanmean(dim=dim, keepdim=True)
    return ((x - mean) ** 2).nanmean(dim=dim).sqrt()


def _summaries(name: str, per_case: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """Mean / std summaries of a (N, C') score table that may hold NaN."""
    per_class = per_case.nanmean(dim=0)
    case_mean = per_case.nanmean(dim=1)
    return {
        name: float(per_class.nanmean()),
        f"{name}_per_class": per_class,
        f"{name}_std_per_class": _nanstd(per_case, dim=0),
        f"{name}_std": float(_nanstd(case_mean[None], dim=1)[0]) if case_mean.numel() else float("nan"),
        f"{name}_per_case": per_case,
    }
