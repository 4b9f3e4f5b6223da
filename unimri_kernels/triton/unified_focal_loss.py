"""Triton kernels of ``unimri::unified_focal_loss`` and their launcher.

Grid (B, ⌈N / BLOCK_N⌉); each program holds a [BLOCK_C, BLOCK_N] tile of logits (all
classes of BLOCK_N pixels) so the softmax over classes stays in registers.
Pass 1 writes one partial row [TP_c | Σp_c | Σy_c | focal | count] per program (summed
by the launcher in a fixed order: deterministic, no atomics). The tiny (B, C) finishing
step (mTI, loss, gradient coefficients) is shared with the reference backend
(:func:`unimri_kernels.reference.loss.finish_from_stats`) and runs on the device with no
host sync. Pass 2 recomputes the tile's softmax and writes d loss_b / d logits.
The maths is documented in :mod:`unimri_kernels.reference.loss`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from unimri_kernels.reference.loss import finish_from_stats


@triton.jit
def _neg_expm1(x):
    """1 − exp(x) for x ≤ 0, accurate near 0 (no libdevice expm1 in the interpreter)."""
    poly = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (
        1.0 / 720.0 + x * (1.0 / 5040.0 + x / 40320.0)))))))
    return -tl.where(x > -0.1, poly, tl.exp(x) - 1.0)


@triton.jit
def _pow_nonneg(base, e):
    """base^e for base ≥ 0, e ≥ 0 with 0^0 = 1 (no tl.math.pow in the interpreter)."""
    safe = tl.where(base > 0, base, 1.0)
    return tl.where(e == 0, 1.0, tl.where(base > 0, tl.exp(e * tl.log(safe)), 0.0))


@triton.jit
def _load_tile(z_ptr, t_ptr, params_ptr, C, N, ignore_index,
               IS_INDEX: tl.constexpr, ACC64: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """This program's tile: log-softmax lp, probability p, target y, q = 1 − p, the focal
    factor q^γ, γ per class, masks and offsets."""
    b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = offs_c < C
    nmask = offs_n < N
    mask = cmask[:, None] & nmask[None, :]
    offs = b * C * N + offs_c[:, None] * N + offs_n[None, :]
    z = tl.load(z_ptr + offs, mask=mask, other=0.0)
    if ACC64:
        z = z.to(tl.float64)
    else:
        z = z.to(tl.float32)
    z = tl.where(cmask[:, None], z, float("-inf"))
    zmax = tl.max(z, axis=0)
    lse = zmax + tl.log(tl.sum(tl.exp(z - zmax[None, :]), axis=0))
    lp = z - lse[None, :]
    p = tl.exp(lp)
    if IS_INDEX:
        t = tl.load(t_ptr + b * N + offs_n, mask=nmask, other=ignore_index)
        valid = nmask & (t != ignore_index)
        y = tl.where(offs_c[:, None] == t[None, :], 1.0, 0.0).to(z.dtype)
    else:
        valid = nmask
        y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(z.dtype)
    vmask = cmask[:, None] & valid[None, :]
    y = tl.where(vmask, y, 0.0)
    gam = tl.load(params_ptr + C + offs_c, mask=cmask, other=0.0).to(lp.dtype)
    q = _neg_expm1(lp)
    qg = _pow_nonneg(q, gam[:, None])
    return b, pid_n, lp, p, y, q, qg, gam, vmask, valid, offs, mask, offs_c, cmask


@triton.jit
def _ufl_stats_kernel(z_ptr, t_ptr, params_ptr, partial_ptr, C, N, ignore_index, NUM_BLOCKS,
                      IS_INDEX: tl.constexpr, ACC64: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    b, pid_n, lp, p, y, q, qg, gam, vmask, valid, offs, mask, offs_c, cmask = _load_tile(
        z_ptr, t_ptr, params_ptr, C, N, ignore_index, IS_INDEX, ACC64, BLOCK_C, BLOCK_N)
    fw = tl.load(params_ptr + offs_c, mask=cmask, other=0.0).to(lp.dtype)
    pv = tl.where(vmask, p, 0.0)
    focal_terms = fw[:, None] * y * qg * (-lp)
    focal = tl.sum(tl.sum(tl.where(vmask & (y != 0), focal_terms, 0.0), axis=1), axis=0)
    count = tl.sum(valid.to(lp.dtype), axis=0)
    row = partial_ptr + (b * NUM_BLOCKS + pid_n) * (3 * C + 2)
    tl.store(row + offs_c, tl.sum(pv * y, axis=1), mask=cmask)
    tl.store(row + C + offs_c, tl.sum(pv, axis=1), mask=cmask)
    tl.store(row + 2 * C + offs_c, tl.sum(y, axis=1), mask=cmask)
    tl.store(row + 3 * C, focal)
    tl.store(row + 3 * C + 1, count)


@triton.jit
def _ufl_grad_kernel(z_ptr, t_ptr, params_ptr, coef_ptr, grad_ptr, C, N, ignore_index,
                     IS_INDEX: tl.constexpr, ACC64: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    b, pid_n, lp, p, y, q, qg, gam, vmask, valid, offs, mask, offs_c, cmask = _load_tile(
        z_ptr, t_ptr, params_ptr, C, N, ignore_index, IS_INDEX, ACC64, BLOCK_C, BLOCK_N)
    k_tp = tl.load(coef_ptr + b * 3 * C + offs_c, mask=cmask, other=0.0)
    k_p = tl.load(coef_ptr + b * 3 * C + C + offs_c, mask=cmask, other=0.0)
    fw_n = tl.load(coef_ptr + b * 3 * C + 2 * C + offs_c, mask=cmask, other=0.0)
    s = tl.where(q > 0, -lp / tl.where(q > 0, q, 1.0), 1.0)  # −log p / (1 − p) → 1
    a = fw_n[:, None] * y * qg * (-1.0 - gam[:, None] * p * s)
    a = tl.where(vmask & (y != 0), a, 0.0)
    bb = tl.where(vmask, k_tp[:, None] * y + k_p[:, None], 0.0)
    pz = tl.where(cmask[:, None], p, 0.0)
    sum_a = tl.sum(a, axis=0)
    sum_pb = tl.sum(pz * bb, axis=0)
    g = a - pz * sum_a[None, :] + pz * (bb - sum_pb[None, :])
    g = tl.where(vmask, g, 0.0)
    tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _blocks(num_classes: int, n: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(num_classes)
    block_n = max(16, min(1024, 4096 // block_c, triton.next_power_of_2(n)))
    return block_c, block_n


def unified_focal_loss_triton(logits: torch.Tensor, target: torch.Tensor, class_params: torch.Tensor,
                              fp_weight: float, fn_weight: float, smooth: float, ignore_index: int,
                              batch: bool, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher. logits (B, C, N) contiguous; target int64 (B, N) or soft (B, C, N).

    Returns (loss (B,) or (1,) in fp32 — fp64 for fp64 logits —, grad like logits or empty).
    """
    bsz, c, n = logits.shape
    acc64 = logits.dtype == torch.float64
    acc = torch.float64 if acc64 else torch.float32
    is_index = not target.dtype.is_floating_point
    params = class_params.to(device=logits.device, dtype=torch.float64).contiguous()
    block_c, block_n = _blocks(c, n)
    num_blocks = triton.cdiv(n, block_n)
    partial = torch.empty((bsz, num_blocks, 3 * c + 2), device=logits.device, dtype=acc)
    grid = (bsz, num_blocks)
    _ufl_stats_kernel[grid](logits, target, params, partial, c, n, ignore_index, num_blocks,
                            IS_INDEX=is_index, ACC64=acc64, BLOCK_C=block_c, BLOCK_N=block_n)
    loss, coef = finish_from_stats(partial.sum(1), params, fp_weight, fn_weight, smooth, batch)
    if not compute_grad:
        return loss, logits.new_empty((0,))
    grad = torch.empty_like(logits)
    _ufl_grad_kernel[grid](logits, target, params, coef.contiguous(), grad, c, n, ignore_index,
                           IS_INDEX=is_index, ACC64=acc64, BLOCK_C=block_c, BLOCK_N=block_n)
    return loss, grad
