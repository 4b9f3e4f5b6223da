"""The asymmetric (and symmetric) Unified Focal loss of Yeung et al. (2022) and its parts.

With p the softmax probabilities, y the one-hot target, r0 = ``common_class`` (the
background) and the defaults λ = ``weight`` = 0.5, δ = ``delta`` = 0.6, γ = ``gamma`` = 0.5:

    L_aF  = (1−δ)·(1−p_r0)^γ·(−y_r0 log p_r0) + δ·Σ_{c≠r0} (−y_c log p_c)   (mean over pixels)
    L_aFT = [(1 − mTI_r0) + Σ_{c≠r0} (1 − mTI_c)^(1−γ)] / C
    mTI_c = (TP + ε) / (TP + δ·FN + (1−δ)·FP + ε)
    L     = λ·L_aF + (1−λ)·L_aFT

The symmetric variant applies the focal factor to every class in both parts: (1−p_c)^γ
on every focal term and (1 − mTI_c)^(1−γ) on every Tversky term. λ weights the focal
part, as in the paper's eq. 12 and MONAI. With γ = 0, δ = 0.5: λ = 1 gives ½·CE and
λ = 0 the Dice loss. Unlike MONAI's ``AsymmetricUnifiedFocalLoss`` these take logits,
handle any number of classes, 2D and 3D, give finite gradients at saturation and honour
``reduction``. Common arguments: :mod:`unimri.losses._base`.
"""
from __future__ import annotations

from unimri.losses._base import ClassParams, FusedSegmentationLoss


def _check_unit(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


class _DeltaGamma(FusedSegmentationLoss):
    """δ (false-negative weight) and γ (focal exponent) shared by the Yeung losses."""

    def __init__(self, delta: float = 0.6, gamma: float = 0.5, smooth: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.delta = _check_unit("delta", delta)
        self.gamma = _check_unit("gamma", gamma)
        self.smooth = float(smooth)
        self.fn_weight = self.delta
        self.fp_weight = 1.0 - self.delta

    def _focal_rows(self, num_classes: int, scale: float, symmetric: bool) -> tuple[list[float], list[float]]:
        inc = self.included(num_classes)
        r0 = self.common_class
        weight = [scale * inc[c] * ((1 - self.delta) if c == r0 else self.delta) for c in range(num_classes)]
        gamma = [self.gamma if (c == r0 or symmetric) else 0.0 for c in range(num_classes)]
        return weight, gamma

    def _tversky_rows(self, num_classes: int, scale: float, symmetric: bool) -> tuple[list[float], list[float]]:
        # L_aFT divides by C (every class: unimri_kernels.reference.unified_focal_loss); excluded
        # classes weigh 0.
        weight = self.tversky_mean_weights(num_classes, scale)
        exponent = [1.0 if (c == self.common_class and not symmetric) else 1.0 - self.gamma
                    for c in range(num_classes)]
        return weight, exponent


class AsymmetricFocalLoss(_DeltaGamma):
    """L_aF: focal modulation on the common (background) class only. Logits in."""

    def class_params(self, num_classes: int) -> ClassParams:
        fw, g = self._focal_rows(num_classes, 1.0, symmetric=False)
        zero = [0.0] * num_classes
        return ClassParams(fw, g, zero, [1.0] * num_classes)


class AsymmetricFocalTverskyLoss(_DeltaGamma):
    """L_aFT: focal Tversky enhancement on the rare classes only. Logits in."""

    def class_params(self, num_classes: int) -> ClassParams:
        tw, ex = self._tversky_rows(num_classes, 1.0, symmetric=False)
        zero = [0.0] * num_classes
        return ClassParams(zero, zero, tw, ex)


class UnifiedFocalLoss(_DeltaGamma):
    """λ·L_aF + (1−λ)·L_aFT (``symmetric=True``: the symmetric Unified Focal loss).

    Args:
        weight: λ, the weight of the focal (distribution) part.
        delta: δ, weight of false negatives in mTI and of rare classes in the focal part.
        gamma: γ, focal exponent (suppression of the background / enhancement of rare classes).
        symmetric: use the symmetric variant.
        common_class: index of the common (background) class r0.
        smooth: ε of the modified Tversky index.
    """

    def __init__(self, weight: float = 0.5, delta: float = 0.6, gamma: float = 0.5,
                 symmetric: bool = False, **kwargs):
        super().__init__(delta=delta, gamma=gamma, **kwargs)
        self.weight = _check_unit("weight", weight)
        self.symmetric = bool(symmetric)

    def class_params(self, num_classes: int) -> ClassParams:
        fw, g = self._focal_rows(num_classes, self.weight, self.symmetric)
        tw, ex = self._tversky_rows(num_classes, 1.0 - self.weight, self.symmetric)
        return ClassParams(fw, g, tw, ex)
