"""Triton kernels of ``unimri::unified_focal_loss`` and their launcher.

Grid (B·⌈N / BLOCK_N⌉,) on axis 0 (axis 1 would cap B·blocks at 65,535); each program
holds a [BLOCK_C, BLOCK_N] tile of logits (all classes of BLOCK_N pixels) so the softmax
over classes stays in registers. Offsets inside a sample are int32 unless C·N can pass
2³¹ (``IDX64``); the sample offset b·C·N is always int64.
Pass 1 writes one partial row [TP_c | Σp_c | Σy_c | focal | count | bad labels] per
program, summed by the launcher in a fixed order (deterministic, no atomics). Labels that
are neither a class nor ``ignore_index`` raise ``ValueError`` as on the C++ backend, after
one host read of their summed count (index targets only; skipped on meta tensors and
during CUDA graph capture). The tiny (B, C) finishing step (mTI, loss, gradient
coefficients) is shared with the reference backend
(:func:`unimri_kernels.reference.unified_focal_loss.finish_from_stats`). Pass 2 recomputes the tile's
softmax and writes d loss_b / d logits. The maths is in :mod:`unimri_kernels.reference.unified_focal_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from unimri_kernels.reference.unified_focal_loss import finish_from_stats
from unimri_kernels.triton.launch import (Target, check_grid, needs_int64, next_pow2,
                                          skip_host_checks, target_for)


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
def _load_tile(z_ptr, t_ptr, params_ptr, C, N, ignore_index, NUM_BLOCKS,
               IS_INDEX: tl.constexpr, ACC64: tl.constexpr, IDX64: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's tile: log-softmax lp, probability p, target y, q = 1 − p, the focal
    factor q^γ, γ per class, masks, offsets inside sample b, and the pixels whose label
    is neither a class nor ``ignore_index`` (``bad``)."""
    pid = tl.program_id(0)
    b = pid // NUM_BLOCKS
    pid_n = pid - b * NUM_BLOCKS
    offs_c = tl.arange(0, BLOCK_C)
    if IDX64:  # C·N or N itself passes 2**31 - 1
        offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = offs_c.to(tl.int64) * N
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = offs_c * N
    cmask = offs_c < C
    nmask = offs_n < N
    mask = cmask[:, None] & nmask[None, :]
    offs = rows[:, None] + offs_n[None, :]
    sample = b.to(tl.int64) * C * N  # B·C·N passes 2**31 on large volumes
    z = tl.load(z_ptr + sample + offs, mask=mask, other=0.0)
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
        t = tl.load(t_ptr + b.to(tl.int64) * N + offs_n, mask=nmask, other=ignore_index)
        kept = nmask & (t != ignore_index)
        bad = kept & ((t < 0) | (t >= C))
        valid = kept & (t >= 0) & (t < C)
        y = tl.where(offs_c[:, None] == t[None, :], 1.0, 0.0).to(z.dtype)
    else:
        valid = nmask
        bad = offs_n < 0
        y = tl.load(t_ptr + sample + offs, mask=mask, other=0.0).to(z.dtype)
    vmask = cmask[:, None] & valid[None, :]
    y = tl.where(vmask, y, 0.0)
    gam = tl.load(params_ptr + C + offs_c, mask=cmask, other=0.0).to(lp.dtype)
    q = _neg_expm1(lp)
    qg = _pow_nonneg(q, gam[:, None])
    return pid, b, lp, p, y, q, qg, gam, vmask, valid, bad, sample + offs, mask, offs_c, cmask


@triton.jit
def _ufl_stats_kernel(z_ptr, t_ptr, params_ptr, partial_ptr, C, N, ignore_index, NUM_BLOCKS,
                      IS_INDEX: tl.constexpr, ACC64: tl.constexpr, IDX64: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """One partial row [TP_c | Σp_c | Σy_c | focal | count | bad labels] per program."""
    pid, b, lp, p, y, q, qg, gam, vmask, valid, bad, offs, mask, offs_c, cmask = _load_tile(
        z_ptr, t_ptr, params_ptr, C, N, ignore_index, NUM_BLOCKS, IS_INDEX, ACC64, IDX64,
        BLOCK_C, BLOCK_N)
    fw = tl.load(params_ptr + offs_c, mask=cmask, other=0.0).to(lp.dtype)
    pv = tl.where(vmask, p, 0.0)
    focal_terms = fw[:, None] * y * qg * (-lp)
    focal = tl.sum(tl.sum(tl.where(vmask & (y != 0), focal_terms, 0.0), axis=1), axis=0)
    count = tl.sum(valid.to(lp.dtype), axis=0)
    row = partial_ptr + pid.to(tl.int64) * (3 * C + 3)
    tl.store(row + offs_c, tl.sum(pv * y, axis=1), mask=cmask)
    tl.store(row + C + offs_c, tl.sum(pv, axis=1), mask=cmask)
    tl.store(row + 2 * C + offs_c, tl.sum(y, axis=1), mask=cmask)
    tl.store(row + 3 * C, focal)
    tl.store(row + 3 * C + 1, count)
    tl.store(row + 3 * C + 2, tl.sum(bad.to(lp.dtype), axis=0))


@triton.jit
def _ufl_grad_kernel(z_ptr, t_ptr, params_ptr, coef_ptr, grad_ptr, C, N, ignore_index, NUM_BLOCKS,
                     IS_INDEX: tl.constexpr, ACC64: tl.constexpr, IDX64: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    pid, b, lp, p, y, q, qg, gam, vmask, valid, bad, offs, mask, offs_c, cmask = _load_tile(
        z_ptr, t_ptr, params_ptr, C, N, ignore_index, NUM_BLOCKS, IS_INDEX, ACC64, IDX64,
        BLOCK_C, BLOCK_N)
    coef = coef_ptr + b * 3 * C
    k_tp = tl.load(coef + offs_c, mask=cmask, other=0.0)
    k_p = tl.load(coef + C + offs_c, mask=cmask, other=0.0)
    fw_n = tl.load(coef + 2 * C + offs_c, mask=cmask, other=0.0)
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


# ----------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class LossConfig:
    """Launch configuration of one loss kernel: [BLOCK_C, BLOCK_N] tiles, one program per
    (sample, pixel block) on grid axis 0."""

    block_c: int
    block_n: int
    num_warps: int
    num_blocks: int
    idx64: bool
    grid: tuple[int, ...]

    def meta(self) -> dict:
        return dict(IDX64=self.idx64, BLOCK_C=self.block_c, BLOCK_N=self.block_n,
                    num_warps=self.num_warps)


def _tile_config(batch: int, num_classes: int, n: int, dtype: torch.dtype, target: Target,
                 tile: int, kernel: str) -> LossConfig:
    block_c = next_pow2(num_classes)
    if target.gpu:
        # ~8 (fp64: 4) tile elements per thread keep every temporary in registers
        block_n = max(32, min(tile // block_c, next_pow2(n)))
        elems = block_c * block_n
        num_warps = max(1, min(8, elems // (32 * (4 if dtype == torch.float64 else 8))))
    else:  # the interpreter runs whole tiles in numpy: larger is faster
        block_n = max(16, min(1024, 4096 // block_c, next_pow2(n)))
        num_warps = 4
    num_blocks = triton.cdiv(n, block_n)
    grid = check_grid((batch * num_blocks,), kernel)
    idx64 = needs_int64(num_classes * n, n + block_n)
    return LossConfig(block_c, block_n, num_warps, num_blocks, idx64, grid)


def ufl_stats_config(batch: int, num_classes: int, n: int, dtype: torch.dtype,
                     target: Target) -> LossConfig:
    """Configuration of ``_ufl_stats_kernel`` for logits (batch, num_classes, n) of ``dtype``."""
    return _tile_config(batch, num_classes, n, dtype, target,
                        1024 if dtype == torch.float64 else 2048, "unified_focal_loss (stats)")


def ufl_grad_config(batch: int, num_classes: int, n: int, dtype: torch.dtype,
                    target: Target) -> LossConfig:
    """Configuration of ``_ufl_grad_kernel`` (its own tiling: it needs no partial rows)."""
    return _tile_config(batch, num_classes, n, dtype, target,
                        1024 if dtype == torch.float64 else 2048, "unified_focal_loss (grad)")


def _check_labels(bad: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise the CPU backend's contract: every label is a class or ``ignore_index``."""
    if skip_host_checks(bad.device):
        return
    n_bad = int(bad.sum().item())  # the only host sync of the launcher
    if n_bad:
        raise ValueError(f"unified_focal_loss: target holds {n_bad} label(s) outside "
                         f"[0, {num_classes}) that are not ignore_index={ignore_index}")


def unified_focal_loss_triton(logits: torch.Tensor, target: torch.Tensor, class_params: torch.Tensor,
                              fp_weight: float, fn_weight: float, smooth: float, ignore_index: int,
                              batch: bool, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher. logits (B, C, N) contiguous; target int64 (B, N) or soft (B, C, N).

    Returns (loss (B,) or (1,) in fp32 — fp64 for fp64 logits —, grad like logits or empty).
    Raises ``ValueError`` if an index target holds a label outside [0, C) other than
    ``ignore_index`` (counted by the stats kernel: no separate pass over the target).
    """
    bsz, c, n = logits.shape
    tgt = target_for(logits.device)
    acc64 = logits.dtype == torch.float64
    acc = torch.float64 if acc64 else torch.float32
    is_index = not target.dtype.is_floating_point
    params = class_params.to(device=logits.device, dtype=torch.float64).contiguous()
    cfg = ufl_stats_config(bsz, c, n, logits.dtype, tgt)
    partial = torch.empty((bsz, cfg.num_blocks, 3 * c + 3), device=logits.device, dtype=acc)
    _ufl_stats_kernel[cfg.grid](logits, target, params, partial, c, n, ignore_index,
                                cfg.num_blocks, IS_INDEX=is_index, ACC64=acc64, **cfg.meta())
    stats = partial.sum(1)  # fixed order: deterministic, no atomics
    if is_index:
        _check_labels(stats[:, 3 * c + 2], c, ignore_index)
    loss, coef = finish_from_stats(stats[:, :3 * c + 2], params, fp_weight, fn_weight, smooth,
                                   batch)
    if not compute_grad:
        return loss, logits.new_empty((0,))
    grad = torch.empty_like(logits)
    gcfg = ufl_grad_config(bsz, c, n, logits.dtype, tgt)
    _ufl_grad_kernel[gcfg.grid](logits, target, params, coef.contiguous(), grad, c, n,
                                ignore_index, gcfg.num_blocks, IS_INDEX=is_index, ACC64=acc64,
                                **gcfg.meta())
    return loss, grad
