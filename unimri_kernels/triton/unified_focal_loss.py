"""Triton kernels of ``unimri::unified_focal_loss`` and their launchers.

Three kernels, no host read of device data (design and byte model: docs/gpu_kernels.md):

* ``_ufl_stats_kernel``, grid (B·⌈N / BLOCK_N⌉,) on axis 0 (axis 1 would cap B·blocks at
  65,535): each program holds a [BLOCK_C, BLOCK_N] tile of logits (all classes of BLOCK_N
  pixels) so the softmax over classes stays in registers, and writes one partial row
  [TP_c | Σp_c | Σy_c | focal | count | bad labels]; index targets wider than a byte are
  also written as uint8 for the gradient sweep.
* ``_ufl_finish_kernel``, grid (B,) or (1,) when the batch is pooled: sums the partial rows
  in a fixed order (deterministic, no atomics) and computes mTI, the loss and the
  per-class gradient coefficients — the maths of
  :func:`unimri_kernels.reference.unified_focal_loss.finish_from_stats` in one launch.
* ``_ufl_grad_kernel``: recomputes the tile's softmax and writes d loss_b / d logits,
  times grad_output[b] when it runs in backward.

Offsets inside a sample are int32 unless C·N can pass 2³¹ (``IDX64``); the sample offset
b·C·N is always int64. Labels that are neither a class nor ``ignore_index`` make their
loss row NaN and are reported without a synchronisation by :mod:`.labels`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from unimri_kernels.triton.labels import report_bad_labels
from unimri_kernels.triton.launch import (Target, check_grid, needs_int64, next_pow2, split_f64,
                                          target_for)


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
        t = offs_n  # unused
        valid = nmask
        bad = offs_n < 0
        y = tl.load(t_ptr + sample + offs, mask=mask, other=0.0).to(z.dtype)
    vmask = cmask[:, None] & valid[None, :]
    y = tl.where(vmask, y, 0.0)
    gam = tl.load(params_ptr + C + offs_c, mask=cmask, other=0.0).to(lp.dtype)
    q = _neg_expm1(lp)
    qg = _pow_nonneg(q, gam[:, None])
    return pid, b, t, lp, p, y, q, qg, gam, vmask, valid, bad, sample + offs, mask, offs_c, cmask


@triton.jit
def _ufl_stats_kernel(z_ptr, t_ptr, params_ptr, partial_ptr, lab_ptr, C, N, ignore_index,
                      NUM_BLOCKS, IS_INDEX: tl.constexpr, ACC64: tl.constexpr,
                      IDX64: tl.constexpr, WRITE_LABELS: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """One partial row [TP_c | Σp_c | Σy_c | focal | count | bad labels] per program;
    with WRITE_LABELS also the labels as uint8 (255 for ignored and bad pixels) for the
    gradient sweep to read instead of the wider user labels."""
    pid, b, t, lp, p, y, q, qg, gam, vmask, valid, bad, offs, mask, offs_c, cmask = _load_tile(
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
    if WRITE_LABELS:
        offs_n = (pid - b * NUM_BLOCKS).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        lab = tl.where(valid, t, 255).to(tl.uint8)
        tl.store(lab_ptr + b.to(tl.int64) * N + offs_n, lab, mask=offs_n < N)


@triton.jit
def _ufl_finish_kernel(partial_ptr, params_ptr, loss_ptr, coef_ptr, bad_ptr, C, ROWS,
                       fp_hi, fp_lo, fn_hi, fn_lo, smooth_hi, smooth_lo,
                       ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program per loss row g (a sample, or the pooled batch): sums partial rows
    g·ROWS … (g+1)·ROWS − 1 in a fixed order, then writes loss[g], coef[g] = [K_TP | K_P |
    fw/N] (dL/dp = K_TP·y + K_P) and the bad-label count bad[g]. A row holding a bad label
    gets a NaN loss and NaN coefficients: it can never be silently dropped.
    Same maths as :func:`unimri_kernels.reference.unified_focal_loss.finish_from_stats`.
    Scalar arguments arrive as fp32 pairs (hi, lo) whose sum is the float64 value."""
    g = tl.program_id(0)
    fp_weight = tl.cast(fp_hi, ACC) + tl.cast(fp_lo, ACC)
    fn_weight = tl.cast(fn_hi, ACC) + tl.cast(fn_lo, ACC)
    smooth = tl.cast(smooth_hi, ACC) + tl.cast(smooth_lo, ACC)
    offs_c = tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    width = 3 * C + 3
    tp = tl.zeros((BLOCK_C,), ACC)
    psum = tl.zeros((BLOCK_C,), ACC)
    ysum = tl.zeros((BLOCK_C,), ACC)
    scal = tl.zeros((4,), ACC)  # focal, count, bad, (pad)
    offs_s = tl.arange(0, 4)
    smask = offs_s < 3
    base = partial_ptr + g.to(tl.int64) * ROWS * width
    for r0 in range(0, ROWS, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < ROWS
        rows = base + r.to(tl.int64)[:, None] * width
        m = rmask[:, None] & cmask[None, :]
        tp += tl.sum(tl.load(rows + offs_c[None, :], mask=m, other=0.0), axis=0)
        psum += tl.sum(tl.load(rows + C + offs_c[None, :], mask=m, other=0.0), axis=0)
        ysum += tl.sum(tl.load(rows + 2 * C + offs_c[None, :], mask=m, other=0.0), axis=0)
        scal += tl.sum(tl.load(rows + 3 * C + offs_s[None, :],
                               mask=rmask[:, None] & smask[None, :], other=0.0), axis=0)
    focal = tl.sum(tl.where(offs_s == 0, scal, 0.0), axis=0)
    count = tl.sum(tl.where(offs_s == 1, scal, 0.0), axis=0)
    bad = tl.sum(tl.where(offs_s == 2, scal, 0.0), axis=0)
    fw = tl.load(params_ptr + offs_c, mask=cmask, other=0.0).to(ACC)
    tw = tl.load(params_ptr + 2 * C + offs_c, mask=cmask, other=0.0).to(ACC)
    ex = tl.load(params_ptr + 3 * C + offs_c, mask=cmask, other=0.0).to(ACC)
    inv_n = tl.where(count > 0, 1.0 / tl.maximum(count, 1.0), 0.0)
    num = tp + smooth
    den = tp + fn_weight * (ysum - tp) + fp_weight * (psum - tp) + smooth
    u = 1.0 - num / den
    u_safe = tl.maximum(u, 1e-30)  # TINY of the reference
    log_u = tl.log(u_safe)
    tv = tl.where(ex == 0, 1.0, tl.exp(ex * log_u))
    loss = focal * inv_n + tl.sum(tl.where(cmask, tw * tv, 0.0), axis=0)
    dl_dm = tl.where(u > 1e-30, -tw * ex * tl.exp((ex - 1.0) * log_u), 0.0)
    k_tp = dl_dm * (den - num * (1.0 - fp_weight - fn_weight)) / (den * den)
    k_p = dl_dm * (-num * fp_weight) / (den * den)
    poison = tl.where(bad > 0, float("nan"), 0.0)  # NaN + x = NaN; 0 + x = x
    tl.store(loss_ptr + g, loss + poison)
    row = coef_ptr + g.to(tl.int64) * 3 * C
    tl.store(row + offs_c, k_tp + poison, mask=cmask)
    tl.store(row + C + offs_c, k_p + poison, mask=cmask)
    tl.store(row + 2 * C + offs_c, fw * inv_n + poison, mask=cmask)
    tl.store(bad_ptr + g, bad)


@triton.jit
def _ufl_grad_kernel(z_ptr, t_ptr, params_ptr, coef_ptr, go_ptr, grad_ptr, C, N, ignore_index,
                     NUM_BLOCKS, COEF_STRIDE, GO_STRIDE,
                     IS_INDEX: tl.constexpr, ACC64: tl.constexpr, IDX64: tl.constexpr,
                     HAS_GO: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """d loss_b / d logits for this program's tile, times grad_output[b] when ``HAS_GO``
    (folded into the per-class coefficients: no separate scaling pass). The coefficient
    row of sample b starts at b·COEF_STRIDE (0 when the loss pools the batch)."""
    pid, b, t, lp, p, y, q, qg, gam, vmask, valid, bad, offs, mask, offs_c, cmask = _load_tile(
        z_ptr, t_ptr, params_ptr, C, N, ignore_index, NUM_BLOCKS, IS_INDEX, ACC64, IDX64,
        BLOCK_C, BLOCK_N)
    coef = coef_ptr + b * COEF_STRIDE
    k_tp = tl.load(coef + offs_c, mask=cmask, other=0.0)
    k_p = tl.load(coef + C + offs_c, mask=cmask, other=0.0)
    fw_n = tl.load(coef + 2 * C + offs_c, mask=cmask, other=0.0)
    if HAS_GO:
        go = tl.load(go_ptr + b * GO_STRIDE).to(k_tp.dtype)
        k_tp = k_tp * go
        k_p = k_p * go
        fw_n = fw_n * go
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


@dataclass(frozen=True)
class FinishConfig:
    """``_ufl_finish_kernel``: one program per loss row, each summing ``rows`` partial rows
    in chunks of BLOCK_R."""

    rows: int
    block_r: int
    block_c: int
    num_warps: int
    grid: tuple[int, ...]


def ufl_finish_config(batch: int, num_classes: int, num_blocks: int, pooled: bool) -> FinishConfig:
    """Configuration of ``_ufl_finish_kernel`` for (batch, num_blocks) partial rows."""
    groups = 1 if pooled else batch
    rows = num_blocks * (batch if pooled else 1)
    block_c = next_pow2(num_classes)
    block_r = max(1, min(next_pow2(rows), 4096 // max(block_c, 4)))
    num_warps = 4 if block_r * block_c >= 1024 else 1
    return FinishConfig(rows, block_r, block_c, num_warps,
                        check_grid((groups,), "unified_focal_loss (finish)"))


@dataclass(frozen=True)
class LossStats:
    """What the forward sweep leaves for the gradient sweep: coef (G, 3, C) with G = 1 when
    the batch is pooled, the per-row bad-label counts (G,), the class parameters on the
    device in float64, and the target to read with its ignore index (index targets wider
    than one byte are replaced by the stats kernel's uint8 copy, ignore index 255)."""

    coef: torch.Tensor
    bad: torch.Tensor
    params: torch.Tensor
    target: torch.Tensor
    ignore_index: int

    @property
    def coef_stride(self) -> int:
        return 0 if self.coef.shape[0] == 1 else self.coef.stride(0)


#: Ignore index of the compact uint8 labels (every class index is below it).
COMPACT_IGNORE = 255


def compact_labels(target: torch.Tensor, num_classes: int) -> bool:
    """Whether the stats kernel writes a uint8 copy of ``target`` for the gradient sweep
    (index targets wider than one byte, fewer than 255 classes)."""
    return (not target.dtype.is_floating_point and target.element_size() > 1
            and num_classes < COMPACT_IGNORE)


def ufl_forward_triton(logits: torch.Tensor, target: torch.Tensor, class_params: torch.Tensor,
                       fp_weight: float, fn_weight: float, smooth: float, ignore_index: int,
                       batch: bool) -> tuple[torch.Tensor, LossStats]:
    """Stats and finish kernels (two launches, no host read of device data).

    logits (B, C, N) contiguous; target integer (B, N) (any integer dtype: it is read as
    given) or soft (B, C, N). Returns loss (B,) — (1,) if ``batch`` — in fp32 (fp64 for
    fp64 logits) and the :class:`LossStats` of :func:`ufl_grad_triton`. Bad labels make
    the loss NaN and are reported by :mod:`.labels` (see there).
    """
    bsz, c, n = logits.shape
    tgt = target_for(logits.device)
    acc64 = logits.dtype == torch.float64
    acc = torch.float64 if acc64 else torch.float32
    is_index = not target.dtype.is_floating_point
    params = class_params.to(device=logits.device, dtype=torch.float64).contiguous()
    cfg = ufl_stats_config(bsz, c, n, logits.dtype, tgt)
    partial = torch.empty((bsz, cfg.num_blocks, 3 * c + 3), device=logits.device, dtype=acc)
    compact = compact_labels(target, c)
    labels = torch.empty((bsz, n), device=logits.device, dtype=torch.uint8) if compact else target
    _ufl_stats_kernel[cfg.grid](logits, target, params, partial, labels, c, n, ignore_index,
                                cfg.num_blocks, IS_INDEX=is_index, ACC64=acc64,
                                WRITE_LABELS=compact, **cfg.meta())
    fcfg = ufl_finish_config(bsz, c, cfg.num_blocks, batch)
    groups = fcfg.grid[0]
    loss = torch.empty((groups,), device=logits.device, dtype=acc)
    coef = torch.empty((groups, 3, c), device=logits.device, dtype=acc)
    bad = torch.empty((groups,), device=logits.device, dtype=acc)
    _ufl_finish_kernel[fcfg.grid](partial, params, loss, coef, bad, c, fcfg.rows,
                                  *split_f64(fp_weight), *split_f64(fn_weight), *split_f64(smooth),
                                  ACC=tl.float64 if acc64 else tl.float32, BLOCK_R=fcfg.block_r,
                                  BLOCK_C=fcfg.block_c, num_warps=fcfg.num_warps)
    if is_index:
        report_bad_labels(bad, c, ignore_index)
    return loss, LossStats(coef, bad, params, labels,
                           COMPACT_IGNORE if compact else ignore_index)


def ufl_grad_triton(logits: torch.Tensor, stats: LossStats,
                    grad_loss: torch.Tensor | None) -> torch.Tensor:
    """Gradient kernel (one launch): d loss / d logits like ``logits``, times the per-sample
    ``grad_loss`` ((B,) or (1,), any stride) when given."""
    bsz, c, n = logits.shape
    cfg = ufl_grad_config(bsz, c, n, logits.dtype, target_for(logits.device))
    grad = torch.empty_like(logits)
    if grad_loss is None:
        go, go_stride = stats.coef, 0  # not read
    else:
        go = grad_loss.reshape(-1)
        go_stride = go.stride(0) if go.shape[0] > 1 else 0
    _ufl_grad_kernel[cfg.grid](logits, stats.target, stats.params, stats.coef, go, grad, c, n,
                               stats.ignore_index, cfg.num_blocks, stats.coef_stride, go_stride,
                               IS_INDEX=not stats.target.dtype.is_floating_point,
                               ACC64=logits.dtype == torch.float64,
                               HAS_GO=grad_loss is not None, **cfg.meta())
    return grad


def unified_focal_loss_triton(logits: torch.Tensor, target: torch.Tensor, class_params: torch.Tensor,
                              fp_weight: float, fn_weight: float, smooth: float, ignore_index: int,
                              batch: bool, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's Triton body: (loss (B,) or (1,), unscaled gradient like logits or empty).

    Three launches with ``compute_grad`` (stats, finish, gradient), two without.
    """
    loss, stats = ufl_forward_triton(logits, target, class_params, fp_weight, fn_weight, smooth,
                                     ignore_index, batch)
    if not compute_grad:
        return loss, logits.new_empty((0,))
    return loss, ufl_grad_triton(logits, stats, None)
