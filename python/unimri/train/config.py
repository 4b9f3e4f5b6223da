"""Training configuration: the paper's protocol as defaults, read from flags, YAML or JSON.

The defaults are the paper's: SGD (lr 1e-3, momentum 0.9, weight decay 5e-4), batch 32,
early stopping on the validation loss, five-fold cross-validation, z-score normalisation,
progressive resizing 128 -> 256 -> 512 with the weights carried over between stages.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from unimri.runtime.precision import AMP_MODES

SCHEDULES = ("none", "cosine", "poly", "plateau")
NONFINITE_ACTIONS = ("error", "end")


class StageSize(tuple):
    """A stage's input size: a tuple of ints that also says whether it keeps aspect ratio.

    ``keep_aspect=True`` (a stage given as one number, e.g. ``64``): the tuple is the
    bounding cube and each batch is resized so that its longest axis is that number, the
    other axes in proportion (:func:`unimri.runtime.resize.fit_long_side`); the backbone pads
    to its stride. ``keep_aspect=False`` (``"96x128"`` or a list): exactly this size.
    """

    keep_aspect: bool

    def __new__(cls, dims: Sequence[int], keep_aspect: bool = False) -> "StageSize":
        obj = super().__new__(cls, (int(d) for d in dims))
        obj.keep_aspect = bool(keep_aspect)
        return obj

    def __reduce__(self):  # picklable for DataLoader workers
        return (StageSize, (tuple(self), self.keep_aspect))


def _as_size(value: Any, spatial_dims: int, name: str, keep_aspect: bool = False) -> StageSize:
    """One stage size as ``spatial_dims`` positive ints.

    An int (or a digit string) is the long side when ``keep_aspect`` (stages), else a cube
    (patch sizes); ``"96x128"`` or a list is an exact size.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or a list of {spatial_dims} ints, got {value!r}")
    if isinstance(value, int):
        dims = (value,) * spatial_dims
        if len(dims) == spatial_dims and value >= 1:
            return StageSize(dims, keep_aspect)
    elif isinstance(value, str) and "x" in value.lower():
        try:
            dims = tuple(int(v) for v in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"{name}: expected sizes like '96x128', got {value!r}") from None
    elif isinstance(value, (list, tuple)):
        dims = tuple(int(v) for v in value)
    else:
        try:
            dims = (int(value),) * spatial_dims
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected an int, 'HxW' or a list of ints, got {value!r}") from None
        if len(dims) == spatial_dims and dims[0] >= 1:
            return StageSize(dims, keep_aspect)
    if len(dims) != spatial_dims or any(d < 1 for d in dims):
        raise ValueError(f"{name}: expected {spatial_dims} positive sizes, got {value!r}")
    return StageSize(dims, False)


@dataclass
class TrainConfig:
    """Everything a training run needs; serialised to ``config.json`` in the run folder.

    ``stages`` lists the progressive-resizing input sizes: an int is the long side, the
    other axes keep the data's aspect ratio (a 45 x 120 slice at stage 64 trains at
    24 x 64); ``"96x128"`` or a list per axis is an exact size; ``batch_sizes``/``epochs`` may be one value for all stages or one
    per stage. ``epochs`` is the most a stage runs; early stopping (``patience`` epochs
    without a validation-loss improvement larger than ``min_delta``) may end it sooner.

    Cross-validation is nested: each of the ``folds`` outer folds is a test set that only
    scoring sees; ``val_fraction`` of the remaining groups (patients, or cases) are the
    validation set for early stopping and the best epoch, the rest train. The split comes
    from ``split_seed`` (``seed`` when None), so runs that differ only in ``seed`` share
    their test folds.
    """

    # what to train
    model: str = "unet"
    attention: str | None = None
    loss: str = "unified"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    features: int | None = None
    norm: str = "batch"
    spatial_dims: int = 2
    # data
    dataset: str = "phantom"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    slice_axis: int = -1
    fg_fraction: float = 0.5
    augment: bool = False
    normalize: str = "zscore"
    patch_size: Any = None
    # protocol
    stages: Any = (128, 256, 512)
    batch_size: Any = 32
    epochs: Any = 50
    patience: int = 10
    min_delta: float = 0.0
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "none"
    grad_clip: float | None = None
    # a NaN/inf training loss: "error" stops with NonFiniteLossError; "end" ends the fold's
    # training there (as early stopping would), keeps its best validation epoch and marks the
    # fold as diverged, so a study reports the run instead of losing the others
    on_nonfinite: str = "error"
    amp: str = "auto"
    folds: int = 5
    fold_indices: Any = None
    val_fraction: float = 0.2  # share of each fold's non-test groups held out for early stopping
    seed: int = 0
    split_seed: int | None = None  # seed of the nested split; None: ``seed``
    # machinery
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    channels_last: bool = False  # model and inputs in channels-last memory format
    compile: bool = False  # torch.compile the model for training and validation
    stop_after_epochs: int | None = None

    # ------------------------------------------------------------------ derived
    @property
    def stage_sizes(self) -> list[StageSize]:
        """The stage input sizes, each a :class:`StageSize` of ``spatial_dims`` ints."""
        stages = split_sizes(self.stages) if isinstance(self.stages, str) else self.stages
        if isinstance(stages, int):
            stages = [stages]
        return [_as_size(s, self.spatial_dims, f"stages[{i}]", keep_aspect=True) for i, s in enumerate(stages)]

    def _per_stage(self, value: Any, name: str) -> list[int]:
        n = len(self.stage_sizes)
        values = list(value) if isinstance(value, (list, tuple)) else [value] * n
        if len(values) != n:
            raise ValueError(f"{name}: expected one value or {n} (one per stage), got {value!r}")
        out = []
        for v in values:
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"{name}: expected positive integers, got {value!r}")
            out.append(int(v))
        return out

    @property
    def stage_batch_sizes(self) -> list[int]:
        return self._per_stage(self.batch_size, "batch_size")

    @property
    def stage_epochs(self) -> list[int]:
        return self._per_stage(self.epochs, "epochs")

    @property
    def patch(self) -> tuple[int, ...] | None:
        if self.patch_size is None:
            return None
        return _as_size(self.patch_size, self.spatial_dims, "patch_size")

    def selected_folds(self) -> list[int]:
        if self.fold_indices is None:
            return list(range(self.folds))
        folds = [self.fold_indices] if isinstance(self.fold_indices, int) else list(self.fold_indices)
        bad = [f for f in folds if not 0 <= int(f) < self.folds]
        if bad:
            raise ValueError(f"fold_indices: expected values in [0, {self.folds}), got {bad}")
        return [int(f) for f in folds]

    @property
    def split_seed_or_seed(self) -> int:
        """The seed the nested split is drawn with."""
        return int(self.seed if self.split_seed is None else self.split_seed)

    def model_spec(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        """What rebuilds the network: ``create_model(spec['name'], **spec['kwargs'])``."""
        kwargs: dict[str, Any] = {"spatial_dims": self.spatial_dims, "in_channels": in_channels,
                                  "num_classes": num_classes, "norm": self.norm,
                                  "attention": self.attention}
        if self.features is not None:
            kwargs["features"] = self.features
        kwargs.update(self.model_kwargs)
        return {"name": self.model, "kwargs": kwargs}

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Checks every field that can be checked without data; raises ValueError/TypeError."""
        from unimri.runtime import registry

        registry.check_model_name(self.model)
        registry.check_loss_name(self.loss)
        registry.check_attention(self.attention)
        registry.check_dataset(self.dataset)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {self.spatial_dims!r}")
        if not self.stage_sizes:
            raise ValueError("stages: expected at least one stage size, got none")
        self.stage_batch_sizes, self.stage_epochs, self.patch  # noqa: B018 (parse = check)
        for name in ("lr", "weight_decay"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)!r}")
        if not 0 <= float(self.momentum) < 1:
            raise ValueError(f"momentum: expected in [0, 1), got {self.momentum!r}")
        if self.patience < 1:
            raise ValueError(f"patience: expected >= 1, got {self.patience!r}")
        if self.folds < 2:
            raise ValueError(f"folds: expected >= 2 (k-fold cross-validation), got {self.folds!r}")
        self.selected_folds()
        if not 0 < float(self.val_fraction) < 1:
            raise ValueError(f"val_fraction: expected in (0, 1), got {self.val_fraction!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: expected one of {AMP_MODES}, got {self.amp!r}")
        if self.grad_clip is not None and float(self.grad_clip) <= 0:
            raise ValueError(f"grad_clip: expected a positive max norm or None, got {self.grad_clip!r}")
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite: expected one of {NONFINITE_ACTIONS}, got {self.on_nonfinite!r}")
        if not 0 <= float(self.fg_fraction) <= 1:
            raise ValueError(f"fg_fraction: expected in [0, 1], got {self.fg_fraction!r}")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {self.num_workers!r}")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise ValueError(f"stop_after_epochs: expected >= 1 or None, got {self.stop_after_epochs!r}")
        return self

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in values.items()})

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file holding one mapping of config keys."""
    if not os.path.isfile(path):
        raise ValueError(f"config: file {path!r} does not exist")
    with open(path) as fh:
        text = fh.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"config: {path!r} is not valid YAML ({' '.join(str(exc).split())})") from None
    elif path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config: {path!r} is not valid JSON ({exc})") from None
    else:
        raise ValueError(f"config: expected a .yaml, .yml or .json file, got {path!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {path!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_int_list(text: str | Sequence[int], name: str) -> list[int]:
    """'1,2,3' or [1, 2, 3] -> [1, 2, 3], with an error naming ``name``."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None


def split_sizes(text: str) -> list[int | str]:
    """Comma-separated sizes: ``"64,128"`` -> ``[64, 128]``; ``"96x128"`` stays one per-axis string."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    return [int(v) if v.isdigit() else v for v in parts]
