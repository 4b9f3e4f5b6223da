"""Shared machinery of the loss modules: input checks, layout, the fused op, reduction.

Every loss of :mod:`unimri.losses` is one parametrisation of the fused op
``unimri::unified_focal_loss`` (see :mod:`unimri_kernels.reference.unified_focal_loss` for the maths):
a subclass only says, per class, its focal weight and exponent and its Tversky weight
and exponent.

Conventions (all losses):
* ``input``: logits (B, C, *S), 2D or 3D (any number of spatial axes). Never
  probabilities: the op takes log-softmax / log-sigmoid internally.
* Softmax over C when C ≥ 2. C = 1 (or ``sigmoid=True``): each channel is a binary
  problem seen as the two classes [1 − σ(z), σ(z)], class 0 being the (common)
  negative; with C > 1 and ``sigmoid=True`` (multi-label) the per-channel losses are
  averaged.
* ``target``: class indices (B, *S) or (B, 1, *S) (integer, bool, or float holding
  integers), or one-hot / soft probabilities (B, C, *S) (float). The target is not
  differentiated.
* ``ignore_index``: index targets only; those pixels are left out of every sum.
* ``batch``: pool TP/FP/FN (and the focal mean) over the batch before the Tversky ratio.
* ``reduction``: "mean" | "sum" over samples, or "none": per-sample losses of shape
  (B,) — (1,) with ``batch=True`` — and for multi-label sigmoid (B,) averaged over
  channels. The loss is fp32 for fp16/bf16 logits (fp32 accumulation), fp64 for fp64.
* Non-finite logits give a NaN loss, as ``F.cross_entropy`` does; ``check_finite=True``
  raises a ValueError instead (one extra pass over the logits).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import unimri_kernels  # noqa: F401  (registers torch.ops.unimri.*)
from unimri_kernels.dispatch import backend_for
from unimri_kernels.ops.unified_focal_loss import unified_focal_loss_autograd

REDUCTIONS = ("mean", "sum", "none")
NO_IGNORE = -(2**31)  # sentinel passed to the op when ignore_index is None


@dataclass(frozen=True)
class ClassParams:
    """Per-class rows of the fused op for C classes (lists of length C)."""

    focal_weight: list[float]
    focal_gamma: list[float]
    tversky_weight: list[float]
    tversky_exponent: list[float]

    def tensor(self, device: torch.device) -> Tensor:
        rows = [self.focal_weight, self.focal_gamma, self.tversky_weight, self.tversky_exponent]
        return torch.tensor(rows, dtype=torch.float64, device=device)


def per_class(value: float | list[float] | tuple[float, ...] | Tensor | None, num_classes: int,
              name: str, default: float) -> list[float]:
    """One float per class from a scalar, a sequence or a tensor of ``num_classes`` values
    (``default`` for each when ``value`` is None); a ValueError names ``name`` otherwise."""
    if value is None:
        return [default] * num_classes
    if isinstance(value, (int, float)):
        return [float(value)] * num_classes
    values = [float(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]
    if len(values) != num_classes:
        raise ValueError(f"{name} has {len(values)} entries but the input has {num_classes} classes")
    return values


class FusedSegmentationLoss(nn.Module):
    """Base of the unimri losses (one fused op call per forward).

    Subclasses implement :meth:`class_params`. Arguments common to all losses are listed
    in the module docstring of :mod:`unimri.losses._base`.
    """

    fp_weight: float = 0.5
    fn_weight: float = 0.5
    smooth: float = 1e-6

    def __init__(self, *, include_background: bool = True, ignore_index: int | None = None,
                 batch: bool = False, reduction: str = "mean", sigmoid: bool = False,
                 common_class: int = 0, check_finite: bool = False, validate: bool = True,
                 inplace_backward: bool = True):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        if not isinstance(common_class, int) or common_class < 0:
            raise ValueError(f"common_class must be a non-negative int, got {common_class!r}")
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.batch = batch
        self.reduction = reduction
        self.sigmoid = sigmoid
        self.common_class = common_class
        self.check_finite = check_finite
        self.validate = validate
        self.inplace_backward = inplace_backward

    # -- what a subclass says ------------------------------------------------------------
    def class_params(self, num_classes: int) -> ClassParams:  # pragma: no cover - abstract
        raise NotImplementedError

    def included(self, num_classes: int) -> list[float]:
        """1.0 for classes in the loss, 0.0 for the common class if not include_background."""
        if self.common_class >= num_classes:
            raise ValueError(f"common_class={self.common_class} but the input has only "
                             f"{num_classes} classes")
        return [0.0 if (c == self.common_class and not self.include_background) else 1.0
                for c in range(num_classes)]

    def tversky_mean_weights(self, num_classes: int, scale: float = 1.0) -> list[float]:
        """``scale`` / (number of included classes) for included classes, 0 otherwise."""
        inc = self.included(num_classes)
        return [scale * m / sum(inc) for m in inc]

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, include_background={self.include_background}, "
                f"ignore_index={self.ignore_index}, batch={self.batch}, sigmoid={self.sigmoid}")

    # -- forward -------------------------------------------------------------------------
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """input (B, C, *S) logits; target (B, *S) / (B, 1, *S) indices or (B, C, *S) soft.

        Returns a scalar for reduction "mean"/"sum", else per-sample losses (B,).
        """
        _check_tensors(input, target)
        num_classes = input.shape[1]
        if self.sigmoid or num_classes == 1:
            logits, tgt, groups = self._binary_layout(input, target)
            params = _binary_params(self)
        else:
            logits = input.reshape(input.shape[0], num_classes, -1).contiguous()
            tgt = self._softmax_target(input, target)
            params = self.class_params(num_classes)
            groups = None
        if self.check_finite and not torch.compiler.is_compiling() and not torch.isfinite(input).all():
            raise ValueError("input (logits) contains NaN or Inf values")
        batch = self.batch and groups is None
        compute_grad = torch.is_grad_enabled() and input.requires_grad
        ignore = NO_IGNORE if self.ignore_index is None else int(self.ignore_index)
        loss = unified_focal_loss_autograd(
            logits, tgt, self._params_tensor(params, input.device), float(self.fp_weight),
            float(self.fn_weight), float(self.smooth), ignore, batch, compute_grad, bool(self.inplace_backward))
        if groups is not None:
            loss = loss.view(groups).mean(-1)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def _params_tensor(self, params: ClassParams, device: torch.device) -> Tensor:
        """``params.tensor(device)``, reused while the rows and the device stay the same."""
        key = (device, tuple(map(tuple, (params.focal_weight, params.focal_gamma, params.tversky_weight,
                                         params.tversky_exponent))))
        cached = self.__dict__.get("_params_cache")
        if torch.compiler.is_compiling() or cached is None or cached[0] != key:
            tensor = params.tensor(device)
            if not torch.compiler.is_compiling():
                self.__dict__["_params_cache"] = (key, tensor)
            return tensor
        return cached[1]

    # -- layouts -------------------------------------------------------------------------
    def _index_target(self, target: Tensor, input: Tensor, num_classes: int) -> Tensor:
        """(B, N) int64 class indices from (B, *S) or (B, 1, *S); validated if asked."""
        spatial = input.shape[2:]
        if target.shape == (input.shape[0], *spatial):
            labels = target
        elif target.shape == (input.shape[0], 1, *spatial):
            labels = target[:, 0]
        else:
            raise ValueError(
                f"target of shape {tuple(target.shape)} does not match input {tuple(input.shape)}: "
                f"expected class indices (B, *S) = {(input.shape[0], *spatial)} or (B, 1, *S), "
                f"or one-hot/soft (B, C, *S) = {tuple(input.shape)}")
        if labels.dtype.is_floating_point:
            if self.validate and not torch.compiler.is_compiling() and not torch.equal(labels, labels.round()):
                raise ValueError("target holds non-integer values but has a class-index shape "
                                 f"{tuple(target.shape)}; pass one-hot/soft targets as (B, C, *S)")
        labels = labels.reshape(labels.shape[0], -1).to(torch.int64).contiguous()
        # the C++ and Triton kernels count bad labels in their own pass (no extra read, and
        # on CUDA no host sync: see unimri_kernels.triton.labels)
        if (self.validate and not torch.compiler.is_compiling()
                and backend_for(labels) not in ("cpp", "triton")):
            _check_label_range(labels, num_classes, self.ignore_index)
        return labels

    def _softmax_target(self, input: Tensor, target: Tensor) -> Tensor:
        num_classes = input.shape[1]
        if target.dtype.is_floating_point and target.shape == input.shape:
            soft = target.reshape(input.shape[0], num_classes, -1).to(input.dtype).contiguous()
            if self.validate and not torch.compiler.is_compiling():
                _check_soft(soft)
            return soft
        return self._index_target(target, input, num_classes)

    def _binary_layout(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...] | None]:
        """Logits (G, 2, N) = [0, z] per binary problem, and their target.

        C = 1: one problem per sample (pooled over the batch if ``batch``). C > 1
        (multi-label): one problem per (sample, channel), or per channel if ``batch``.
        Returns the group shape to average the per-problem losses over (None: no regroup).
        """
        bsz, chans = input.shape[:2]
        z = input.reshape(bsz, chans, -1)
        if chans == 1 and not target.dtype.is_floating_point or (
                chans == 1 and target.dtype.is_floating_point and target.shape != input.shape):
            labels = self._index_target(target, input, 2)
            return _two_class(z), labels, None
        if target.shape != input.shape:
            raise ValueError(f"target of shape {tuple(target.shape)} does not match input "
                             f"{tuple(input.shape)}: sigmoid losses with C > 1 need multi-hot "
                             f"targets (B, C, *S)")
        t = target.reshape(bsz, chans, -1).to(input.dtype)
        if self.validate and not torch.compiler.is_compiling():
            _check_soft(t)
        if self.batch:  # pool each channel over the batch: fold B into the pixel axis
            z = z.transpose(0, 1).reshape(chans, 1, -1)
            t = t.transpose(0, 1).reshape(chans, 1, -1)
            groups: tuple[int, ...] = (1, chans)
        else:
            z = z.reshape(bsz * chans, 1, -1)
            t = t.reshape(bsz * chans, 1, -1)
            groups = (bsz, chans)
        soft = torch.cat([1 - t, t], dim=1).contiguous()
        if chans == 1 and not self.batch:
            groups = None
        return _two_class(z), soft, groups


def _two_class(z: Tensor) -> Tensor:
    """(G, 1, N) sigmoid logits -> (G, 2, N) softmax logits [0, z]."""
    return torch.cat([torch.zeros_like(z), z], dim=1).contiguous()


def _binary_params(loss: FusedSegmentationLoss) -> ClassParams:
    return loss.class_params(2)


def _check_tensors(input: Tensor, target: Tensor) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor of logits, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be floating point logits, got dtype {input.dtype}")
    if input.dim() < 3:
        raise ValueError(f"input must be (B, C, *spatial) with at least one spatial axis, "
                         f"got shape {tuple(input.shape)}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}; "
                         "move both to the same device")
    if target.dtype == torch.bool:
        return
    if target.dtype.is_complex:
        raise TypeError(f"target must be integer, bool or float, got dtype {target.dtype}")


def _check_label_range(labels: Tensor, num_classes: int, ignore_index: int | None) -> None:
    check = labels if ignore_index is None else labels[labels != ignore_index]
    if check.numel() == 0:
        return
    lo, hi = int(check.min()), int(check.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"target holds label {bad} outside [0, {num_classes}) "
                         f"(ignore_index={ignore_index}); labels must index the {num_classes} classes")


def _check_soft(soft: Tensor) -> None:
    if soft.numel() and (soft.min() < 0 or soft.max() > 1):
        raise ValueError("one-hot/soft target values must lie in [0, 1] "
                         f"(got min {float(soft.min()):.3g}, max {float(soft.max()):.3g})")
