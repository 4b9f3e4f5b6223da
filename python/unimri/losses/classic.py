"""The losses the paper compares against, on the same fused op (logits in).

Conventions follow MONAI where they coincide: Tversky ``alpha`` weights false positives
and ``beta`` false negatives; Dice/Tversky ``smooth`` is added to numerator and
denominator; class-averaged region losses; focal losses sum over classes per pixel and
average over pixels (MONAI's ``FocalLoss`` averages over classes as well, i.e. it is
these values divided by C). Common arguments: :mod:`unimri.losses._base`.
"""
from __future__ import annotations

from torch import Tensor

from unimri.losses._base import ClassParams, FusedSegmentationLoss, per_class


class CrossEntropyLoss(FusedSegmentationLoss):
    """Cross-entropy on logits, averaged over valid pixels then samples.

    ``weight`` (C,) scales each class's term; unlike ``torch.nn.CrossEntropyLoss`` the
    weighted sum is divided by the pixel count, not by the sum of the pixels' weights.
    """

    def __init__(self, weight: list[float] | Tensor | None = None, **kwargs):
        super().__init__(**kwargs)
        self.class_weight = weight

    def class_params(self, num_classes: int) -> ClassParams:
        inc = self.included(num_classes)
        w = per_class(self.class_weight, num_classes, "weight", 1.0)
        zero = [0.0] * num_classes
        return ClassParams([a * m for a, m in zip(w, inc)], zero, zero, [1.0] * num_classes)


class FocalLoss(FusedSegmentationLoss):
    """Σ_c α_c (1 − p_c)^γ (−y_c log p_c), averaged over pixels (Lin et al. 2017)."""

    def __init__(self, gamma: float = 2.0, alpha: float | list[float] | Tensor | None = None, **kwargs):
        super().__init__(**kwargs)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = alpha

    def class_params(self, num_classes: int) -> ClassParams:
        inc = self.included(num_classes)
        a = per_class(self.alpha, num_classes, "alpha", 1.0)
        zero = [0.0] * num_classes
        return ClassParams([x * m for x, m in zip(a, inc)], [self.gamma] * num_classes, zero,
                           [1.0] * num_classes)


class TverskyLoss(FusedSegmentationLoss):
    """1 − (TP + s) / (TP + α·FP + β·FN + s), averaged over classes (Salehi et al. 2017)."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1e-5,
                 exponent: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if exponent < 0:
            raise ValueError(f"exponent must be >= 0, got {exponent}")
        self.fp_weight, self.fn_weight = float(alpha), float(beta)
        self.smooth = float(smooth)
        self.exponent = float(exponent)

    def class_params(self, num_classes: int) -> ClassParams:
        zero = [0.0] * num_classes
        return ClassParams(zero, zero, self.tversky_mean_weights(num_classes),
                           [self.exponent] * num_classes)


class FocalTverskyLoss(TverskyLoss):
    """(1 − TI)^γ averaged over classes (Abraham & Khan 2019, γ = 1/γ_paper = 0.75)."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                 smooth: float = 1e-5, **kwargs):
        super().__init__(alpha=alpha, beta=beta, smooth=smooth, exponent=gamma, **kwargs)


class DiceLoss(TverskyLoss):
    """1 − (2·TP + s) / (Σp + Σy + s), averaged over classes (MONAI's DiceLoss, softmax)."""

    def __init__(self, smooth: float = 1e-5, **kwargs):
        # (2TP + s)/(2TP + FP + FN + s) is the Tversky index with α = β = ½ and ε = s/2.
        super().__init__(alpha=0.5, beta=0.5, smooth=smooth / 2, **kwargs)


class ComboLoss(DiceLoss):
    """``weight``·CE + (1 − ``weight``)·Dice loss (Taghanaki et al. 2019)."""

    def __init__(self, weight: float = 0.5, smooth: float = 1e-5, **kwargs):
        super().__init__(smooth=smooth, **kwargs)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {weight}")
        self.weight = float(weight)

    def class_params(self, num_classes: int) -> ClassParams:
        inc = self.included(num_classes)
        zero = [0.0] * num_classes
        return ClassParams([self.weight * m for m in inc], zero,
                           self.tversky_mean_weights(num_classes, 1.0 - self.weight), [1.0] * num_classes)


class DiceFocalLoss(DiceLoss):
    """``lambda_dice``·Dice + ``lambda_focal``·Focal (as MONAI's DiceFocalLoss, but the focal
    part sums over classes instead of averaging)."""

    def __init__(self, gamma: float = 2.0, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 smooth: float = 1e-5, **kwargs):
        super().__init__(smooth=smooth, **kwargs)
        if lambda_dice < 0 or lambda_focal < 0 or gamma < 0:
            raise ValueError("gamma, lambda_dice and lambda_focal must be >= 0")
        self.gamma, self.lambda_dice, self.lambda_focal = float(gamma), float(lambda_dice), float(lambda_focal)

    def class_params(self, num_classes: int) -> ClassParams:
        inc = self.included(num_classes)
        return ClassParams([self.lambda_focal * m for m in inc], [self.gamma] * num_classes,
                           self.tversky_mean_weights(num_classes, self.lambda_dice), [1.0] * num_classes)
