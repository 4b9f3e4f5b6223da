"""Names, checks and factories of models, losses, datasets, splits and metrics.

Training, inference and the studies build a model, a loss or a dataset through here, so
that a wrong name gives one clear error wherever it is given.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def _names(module: str, attr: str) -> tuple[str, ...]:
    mod = __import__(module, fromlist=[attr])
    return tuple(getattr(mod, attr))


def model_names() -> tuple[str, ...]:
    return _names("unimri.models", "MODEL_NAMES")


def loss_names() -> tuple[str, ...]:
    return _names("unimri.losses", "LOSS_NAMES")


def attention_kinds() -> tuple[str | None, ...]:
    kinds = _names("unimri.nn", "ATTENTION_KINDS")
    return kinds if None in kinds else (None, *kinds)


def dataset_names() -> tuple[str, ...]:
    from unimri.data import list_datasets

    return tuple(name for name, _ in list_datasets())


def check_model_name(name: str) -> None:
    known = model_names()
    if name not in known:
        raise ValueError(f"model: unknown model {name!r}; expected one of {list(known)}")


def check_loss_name(name: str) -> None:
    known = loss_names()
    if name not in known:
        raise ValueError(f"loss: unknown loss {name!r}; expected one of {list(known)}")


def check_attention(kind: str | None) -> None:
    known = attention_kinds()
    if kind not in known:
        raise ValueError(f"attention: unknown attention {kind!r}; expected one of {list(known)}")


def check_dataset(source: str) -> None:
    """A built-in dataset name or an existing folder/file."""
    if os.path.exists(source):
        return
    from unimri.data import BUILTINS, missing_source_message

    if source not in BUILTINS:
        raise ValueError(f"dataset: {missing_source_message(source)}")


def create_model(spec: dict[str, Any]) -> nn.Module:
    """``spec`` = {"name": ..., "kwargs": {...}} as written by TrainConfig.model_spec."""
    from unimri.models import create_model as _create

    check_model_name(spec["name"])
    return _create(spec["name"], **spec["kwargs"])


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    from unimri.losses import create_loss as _create

    check_loss_name(name)
    return _create(name, **kwargs)


def load_cases(source: str, **kwargs: Any) -> list:
    from unimri.data import load_cases as _load

    check_dataset(source)
    return _load(source, **kwargs)


def nested_kfold_split(case_ids: list[str], k: int, seed: int, val_fraction: float,
                       path: str | None = None, groups: dict[str, str] | None = None):
    from unimri.data.splits import nested_kfold_split as _split

    return _split(case_ids, k=k, seed=seed, val_fraction=val_fraction, path=path, groups=groups)


def metrics_object(num_classes: int):
    """The cumulative metric object the evaluation uses (foreground classes only)."""
    from unimri.metrics import SegmentationMetrics

    return SegmentationMetrics(num_classes=num_classes, include_background=False)


def class_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, 4) int64 [TP, FP, TN, FN] per class for one label-map pair (*S), (*S)."""
    from unimri.metrics import confusion_counts

    return confusion_counts(pred[None], target[None], num_classes)[0]


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-class DSC (NaN for a class absent from the target) from (K, 4) counts."""
    from unimri.metrics import metric_from_counts

    return metric_from_counts("dice", counts, ignore_empty=True)
