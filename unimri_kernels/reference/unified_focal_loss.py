"""Pure-PyTorch forms of the Unified Focal loss family (``unimri::unified_focal_loss``).

Shapes: logits ``z`` (B, C, N) with N the flattened spatial size; target either class
indices (B, N) int64 (``ignore_index`` pixels are left out of every sum) or one-hot /
soft probabilities (B, C, N). ``class_params`` (4, C) float64 holds, per class c:

    row 0  fw_c   focal weight (λ and δ folded in; 0 drops the class from the focal part)
    row 1  g_c    focal exponent γ of (1 − p_c)
    row 2  tw_c   Tversky weight (1 − λ, 1/C and include_background folded in)
    row 3  e_c    Tversky exponent of (1 − mTI_c)

Per sample b (or pooled over the batch when ``batch``), with p = softmax(z, dim=1),
y the one-hot target and the valid pixel count N_b:

    L_b = (1/N_b) Σ_i Σ_c fw_c (1 − p_ic)^g_c (−y_ic log p_ic)
          + Σ_c tw_c · max(1 − mTI_c, TINY)^e_c
    mTI_c = (TP + ε) / (TP + β·FN + α·FP + ε),  TP = Σ p·y, FN = Σ (1−p)·y, FP = Σ p·(1−y)

α = ``fp_weight``, β = ``fn_weight``, ε = ``smooth``. ``TINY`` keeps the derivative of
(1 − mTI)^e finite at a perfect prediction (where it is 0 by convention).

Two implementations live here:
* :func:`unified_focal_loss_reference` — the differentiable ground truth (autograd);
* :func:`unified_focal_loss_torch` — the fused algorithm (loss and analytic gradient
  w.r.t. the logits, in two passes) in vectorised PyTorch: the ``reference`` backend of
  the op, and the finishing step the Triton launcher shares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TINY = 1e-30
_SERIES_Q = 1e-3


def _one_hot_target(target: Tensor, num_classes: int, ignore_index: int, dtype: torch.dtype
                    ) -> tuple[Tensor, Tensor]:
    """(y (B, C, N), valid (B, N) bool) from index or soft targets."""
    if target.dtype.is_floating_point:
        y = target.to(dtype)
        valid = torch.ones(y.shape[0], y.shape[2], dtype=torch.bool, device=y.device)
        return y, valid
    valid = target != ignore_index
    idx = torch.where(valid, target, torch.zeros_like(target))
    y = F.one_hot(idx, num_classes).movedim(-1, 1).to(dtype) * valid.unsqueeze(1).to(dtype)
    return y, valid


def _neg_log_p_over_q(log_p: Tensor, q: Tensor) -> Tensor:
    """s = −log(p)/(1 − p), with its limit 1 (and a smooth series) as q = 1 − p → 0."""
    small = q < _SERIES_Q
    q_safe = torch.where(small, torch.ones_like(q), q)
    series = 1 + q * (1 / 2 + q * (1 / 3 + q / 4))
    return torch.where(small, series, -log_p / q_safe)


def unified_focal_loss_reference(logits: Tensor, target: Tensor, class_params: Tensor,
                                 fp_weight: float, fn_weight: float, smooth: float,
                                 ignore_index: int, batch: bool) -> Tensor:
    """Differentiable ground truth. Returns the loss per sample (B,), or (1,) if ``batch``.

    Written so that autograd stays finite at saturation: (1−p)^g·(−log p) is evaluated
    as q^(g+1)·s(q) with s(q) = −log(1−q)/q, whose derivative has a finite limit at q → 0.
    """
    b, c, _ = logits.shape
    params = class_params.to(device=logits.device, dtype=logits.dtype)
    fw, gam, tw, ex = (params[i].view(1, c, 1) for i in range(4))
    log_p = F.log_softmax(logits, dim=1)
    y, valid = _one_hot_target(target, c, ignore_index, logits.dtype)
    vmask = valid.unsqueeze(1).to(logits.dtype)
    q = -torch.expm1(log_p)
    focal_px = (fw * q.pow(gam + 1) * _neg_log_p_over_q(log_p, q) * y * vmask).sum(1)  # (B, N)
    p = log_p.exp() * vmask
    dims = (0, 2) if batch else (2,)
    tp = (p * y).sum(dims)
    fn = (y * vmask).sum(dims) - tp
    fp = p.sum(dims) - tp
    count = valid.to(logits.dtype).sum((0, 1) if batch else 1)
    focal = focal_px.sum() if batch else focal_px.sum(1)
    focal = torch.where(count > 0, focal / count.clamp_min(1), torch.zeros_like(focal))
    mti = (tp + smooth) / (tp + fn_weight * fn + fp_weight * fp + smooth)
    u = (1 - mti).clamp_min(TINY)
    tv = (tw.view(1, c) * u.pow(ex.view(1, c))).sum(-1)
    return (focal + tv).reshape(-1)


def _pow_nonneg(base: Tensor, exponent: Tensor) -> Tensor:
    """base^exponent for base ≥ 0, exponent ≥ 0 with 0^0 = 1 (what the kernels compute)."""
    return torch.where(exponent == 0, torch.ones_like(base), base.pow(exponent))


def finish_from_stats(stats: Tensor, class_params: Tensor, fp_weight: float, fn_weight: float,
                      smooth: float, batch: bool) -> tuple[Tensor, Tensor]:
    """Loss and per-class gradient coefficients from the pass-1 sums.

    ``stats`` (B, 3C + 2): [TP_c | P_c = Σp | Y_c = Σy | focal sum | valid count] per
    sample, in the accumulation dtype. Returns ``loss`` (B,) or (1,) and ``coef``
    (B, 3, C): rows K_TP, K_P (dL/dp = K_TP·y + K_P) and fw_c / N_b.
    """
    n_samples = stats.shape[0]
    c = (stats.shape[1] - 2) // 3
    if batch:
        stats = stats.sum(0, keepdim=True)
    params = class_params.to(device=stats.device, dtype=stats.dtype)
    fw, _, tw, ex = params[0], params[1], params[2], params[3]
    tp, psum, ysum = stats[:, :c], stats[:, c:2 * c], stats[:, 2 * c:3 * c]
    focal, count = stats[:, 3 * c], stats[:, 3 * c + 1]
    inv_n = torch.where(count > 0, 1 / count.clamp_min(1), torch.zeros_like(count))
    a, b_ = fp_weight, fn_weight
    num = tp + smooth
    den = tp + b_ * (ysum - tp) + a * (psum - tp) + smooth
    mti = num / den
    u = 1 - mti
    u_safe = u.clamp_min(TINY)
    loss = focal * inv_n + (tw * _pow_nonneg(u_safe, ex)).sum(-1)
    dl_dm = torch.where(u > TINY, -tw * ex * u_safe.pow(ex - 1), torch.zeros_like(u))
    k_tp = dl_dm * (den - num * (1 - a - b_)) / (den * den)
    k_p = dl_dm * (-num * a) / (den * den)
    coef = torch.stack([k_tp, k_p, fw * inv_n.unsqueeze(-1)], dim=1)
    if batch:
        coef = coef.expand(n_samples, 3, c)
    return loss, coef


def unified_focal_loss_torch(logits: Tensor, target: Tensor, class_params: Tensor,
                             fp_weight: float, fn_weight: float, smooth: float,
                             ignore_index: int, batch: bool, compute_grad: bool
                             ) -> tuple[Tensor, Tensor]:
    """The fused two-pass algorithm in vectorised PyTorch (the ``reference`` backend).

    Returns (loss (B,) or (1,) in the accumulation dtype, grad (B, C, N) in the logits'
    dtype — d loss_b / d logits — or an empty tensor when ``compute_grad`` is False).
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    b, c, _ = z.shape
    params = class_params.to(device=z.device, dtype=acc)
    fw, gam = params[0].view(1, c, 1), params[1].view(1, c, 1)
    log_p = F.log_softmax(z, dim=1)
    p = log_p.exp()
    y, valid = _one_hot_target(target, c, ignore_index, acc)
    vmask = valid.unsqueeze(1).to(acc)
    q = -torch.expm1(log_p)
    qg = _pow_nonneg(q, gam.expand_as(q))
    focal = (fw * qg * (-log_p) * y * vmask).sum((1, 2))
    pv = p * vmask
    stats = torch.cat([(pv * y).sum(2), pv.sum(2), (y * vmask).sum(2), focal.unsqueeze(1),
                       valid.to(acc).sum(1, keepdim=True)], dim=1)
    loss, coef = finish_from_stats(stats, class_params, fp_weight, fn_weight, smooth, batch)
    if not compute_grad:
        return loss, logits.new_empty((0,))
    s = torch.where(q > 0, -log_p / torch.where(q > 0, q, torch.ones_like(q)), torch.ones_like(q))
    a = coef[:, 2].unsqueeze(-1) * y * qg * (-1 - gam * p * s) * vmask
    bb = (coef[:, 0].unsqueeze(-1) * y + coef[:, 1].unsqueeze(-1)) * vmask
    grad = a - p * a.sum(1, keepdim=True) + p * (bb - (p * bb).sum(1, keepdim=True))
    return loss, (grad * vmask).to(logits.dtype).contiguous()
