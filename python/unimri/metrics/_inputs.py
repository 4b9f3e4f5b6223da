"""Input normalisation shared by the metric functions: label maps or one-hot -> one-hot bool."""
from __future__ import annotations

import torch


def _is_label_map(x: torch.Tensor) -> bool:
    return not (x.dtype == torch.bool or x.is_floating_point())


def _squeeze_channel(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, *S) label map -> (B, *S); (B, *S) passes through (rank >= 4 with a unit dim 1)."""
    if x.dim() >= 4 and x.shape[1] == 1:
        return x[:, 0]
    return x


def label_map_to_one_hot(labels: torch.Tensor, num_classes: int, name: str) -> torch.Tensor:
    """Integer labels (B, *S) -> bool one-hot (B, num_classes, *S); checks the value range."""
    if labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name}: label values must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
                f"got values in [{lo}, {hi}]"
            )
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes)  # (B, *S, C)
    return one_hot.movedim(-1, 1).bool()


def to_one_hot_pair(
    y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring a prediction and a target to bool one-hot tensors (B, C, *S) of one shape.

    Each argument is either an integer label map, (B, *S) or MONAI's (B, 1, *S), or a
    one-hot / binarised tensor (B, C, *S) of dtype bool or float (a float counts as
    positive where it is >= 0.5). Label maps need ``num_classes`` unless the other
    argument is one-hot (its C is used).
    """
    for name, t in (("y_pred", y_pred), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 3:
            raise ValueError(f"{name} must have a batch and at least two spatial dims, got shape {tuple(t.shape)}")
    if num_classes is None:
        one_hot_inputs = [t for t in (y_pred, y) if not _is_label_map(t)]
        if not one_hot_inputs:
            raise ValueError("num_classes is required when both y_pred and y are integer label maps")
        num_classes = one_hot_inputs[0].shape[1]
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")

    def convert(t: torch.Tensor, name: str) -> torch.Tensor:
        if _is_label_map(t):
            return label_map_to_one_hot(_squeeze_channel(t), num_classes, name)
        if t.shape[1] != num_classes:
            raise ValueError(
                f"{name}: a one-hot tensor needs {num_classes} channels (dim 1), got shape {tuple(t.shape)}"
            )
        return t.bool() if t.dtype == torch.bool else t >= 0.5

    pred, target = convert(y_pred, "y_pred"), convert(y, "y")
    if pred.shape != target.shape:
        raise ValueError(
            f"y_pred and y must describe the same shape, got one-hot {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred, target


def drop_background(pred: torch.Tensor, target: torch.Tensor, include_background: bool):
    """Remove channel 0 from both one-hot tensors unless ``include_background``."""
    if include_background:
        return pred, target
    if pred.shape[1] < 2:
        raise ValueError("include_background=False needs at least two classes (channel 0 is the background)")
    return pred[:, 1:], target[:, 1:]
