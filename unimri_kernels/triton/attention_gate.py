"""Triton kernels of the fused attention gate (SAS) and their launchers.

Maths: :mod:`unimri_kernels.reference.attention_gate`. 2D inputs run as 3D with depth 1.
Kernels (one program per tile of BLOCK_P coarse pixels or BLOCK fine pixels of one item;
item and tile share grid axis 0, which CUDA allows up to 2³¹ − 1 programs):

* ``_coarse_kernel``: pre = W_theta @ patches(x) + W_phi @ resample(g) accumulated in
  registers over K and Cg blocks (``tl.dot``), then relu, psi, sigmoid, ``** focal``; writes
  only the coarse attention a (B, Nc). The (B, Ci, Nc) tensor is never written.
* ``_scale_kernel``: alpha = resample(a) on x's grid; y = alpha * x for every channel.
* backward: ``_dalpha_kernel`` (d alpha = grad_alpha + sum_c grad_y * x, scattered to the
  coarse grid), ``_tile_backward_kernel`` (recomputes pre, then weight / patch / g grads),
  ``_grad_x_kernel`` (adds grad_y * alpha), and in deterministic mode
  ``_adjoint_kernel`` (the scatters of d alpha and d g as ordered gathers).

Precision: arithmetic in fp32 (fp64 for fp64 inputs). ``tl.dot`` takes half operands for
half inputs (tensor cores, fp32 accumulation), fp32 ones as TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set and IEEE otherwise (see
:func:`unimri_kernels.triton.launch.dot_operands`). Offsets inside an item are int32
unless Cx·N, Cg·Ng or N can pass 2³¹ (``IDX64``); item offsets are int64.

Atomics: by default weight gradients and the off-grid scatters use float atomics. With
``torch.use_deterministic_algorithms(True)`` none do: the tile backward runs a fixed
number of programs, each adding its tiles in order into its own slot of weight-gradient
partials (summed by torch), and the scatters become gathers through inverted resampling
tables, so results are bitwise identical run to run.
Everything is masked so the kernels also run under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from unimri_kernels.triton.launch import (MIN_DOT, TL_DTYPES, Target, check_grid, dot_operands,
                                          needs_int64, next_pow2, target_for)


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _lerp_corner(i0, i1, l1, BIT: tl.constexpr):
    """Index and weight of one of the two linear-interpolation taps (BIT 0 or 1)."""
    if BIT == 0:
        return i0, 1.0 - l1
    else:
        return i1, l1


@triton.jit
def _item_tile(pid, TILES, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """(item b as int64, flat indices of tile ``pid % TILES``) for a flat program id."""
    b = pid // TILES
    t = pid - b * TILES
    if IDX64:
        idx = t.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        idx = t * BLOCK + tl.arange(0, BLOCK)
    return b.to(tl.int64), idx


@triton.jit
def _patch_offsets(n, Hc, Wc, H, W, S: tl.constexpr, SD: tl.constexpr):
    """Offset, inside an x plane, of the patch corner of coarse pixel n."""
    xc = n % Wc
    yc = (n // Wc) % Hc
    zc = n // (Wc * Hc)
    return (zc * SD) * (H * W) + (yc * S) * W + xc * S


@triton.jit
def _k_offsets(k, N, H, W, S: tl.constexpr, SD: tl.constexpr, IDX64: tl.constexpr):
    """Offset of patch entry k = (c, dz, dy, dx) relative to its patch corner."""
    dx = k % S
    dy = (k // S) % S
    dz = (k // (S * S)) % SD
    c = k // (SD * S * S)
    if IDX64:  # c·N passes 2**31 for wide, large 3D inputs
        c = c.to(tl.int64)
    return c * N + dz * (H * W) + dy * W + dx


@triton.jit
def _accumulate(ptr, vals, mask, first):
    """ptr += vals in memory this program owns (no atomics; ``first``: ptr = vals, so the
    partials need no zeroing pass). Threads holding copies of one element must not race
    between the read and the write: hence the barriers."""
    old = tl.load(ptr, mask=mask & (first == 0), other=0.0)
    tl.debug_barrier()
    tl.store(ptr, old + vals, mask=mask)
    tl.debug_barrier()


@triton.jit
def _load_gate(g_b, c, c_mask, n, p_mask, Ng, Hg, Wg,
               gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
               SAME_G: tl.constexpr, NZ: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """g channels c (BLOCK_K) resampled to coarse pixels n (BLOCK_P): (BLOCK_K, BLOCK_P)."""
    mask = c_mask[:, None] & p_mask[None, :]
    rows = g_b + c[:, None].to(tl.int64) * Ng
    if SAME_G:
        return tl.load(rows + n[None, :], mask=mask, other=0.0).to(ACC)
    out = tl.zeros((BLOCK_K, BLOCK_P), ACC)
    for bz in tl.static_range(NZ):
        zi, wz = _lerp_corner(gz0, gz1, gzl, bz)
        for by in tl.static_range(2):
            yi, wy = _lerp_corner(gy0, gy1, gyl, by)
            for bx in tl.static_range(2):
                xi, wx = _lerp_corner(gx0, gx1, gxl, bx)
                off = (zi * Hg + yi) * Wg + xi
                v = tl.load(rows + off[None, :], mask=mask, other=0.0).to(ACC)
                out += (wz * wy * wx)[None, :] * v
    return out


@triton.jit
def _resample_taps(n, Hc, Wc, gz_ptr, gy_ptr, gx_ptr, mask):
    """Resampling taps (i0, i1, l1 per axis) at flat pixels n of a (·, Hc, Wc) grid, read
    from per-axis tap tables (3 entries per output index)."""
    xc = n % Wc
    yc = (n // Wc) % Hc
    zc = n // (Wc * Hc)
    gz0 = tl.load(gz_ptr + 3 * zc, mask=mask, other=0).to(tl.int32)
    gz1 = tl.load(gz_ptr + 3 * zc + 1, mask=mask, other=0).to(tl.int32)
    gzl = tl.load(gz_ptr + 3 * zc + 2, mask=mask, other=0)
    gy0 = tl.load(gy_ptr + 3 * yc, mask=mask, other=0).to(tl.int32)
    gy1 = tl.load(gy_ptr + 3 * yc + 1, mask=mask, other=0).to(tl.int32)
    gyl = tl.load(gy_ptr + 3 * yc + 2, mask=mask, other=0)
    gx0 = tl.load(gx_ptr + 3 * xc, mask=mask, other=0).to(tl.int32)
    gx1 = tl.load(gx_ptr + 3 * xc + 1, mask=mask, other=0).to(tl.int32)
    gxl = tl.load(gx_ptr + 3 * xc + 2, mask=mask, other=0)
    return gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl


@triton.jit
def _preactivation(x_b, g_b, tw_ptr, pw_ptr, ci, ci_mask, n, p_mask, x_origin,
                   gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                   K, Cg, N, Ng, H, W, Hg, Wg,
                   S: tl.constexpr, SD: tl.constexpr, SAME_G: tl.constexpr, NZ: tl.constexpr,
                   CI_PAD: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
                   ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                   IDX64: tl.constexpr):
    """W_theta @ patches + W_phi @ resample(g) for one tile: (CI_PAD, BLOCK_P), no bias.
    The weights arrive in the dot dtype DOT; the accumulator is ACC."""
    acc = tl.zeros((CI_PAD, BLOCK_P), ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        w = tl.load(tw_ptr + ci[:, None] * K + k[None, :],
                    mask=ci_mask[:, None] & k_mask[None, :], other=0.0)
        koff = _k_offsets(k, N, H, W, S, SD, IDX64)
        xt = tl.load(x_b + koff[:, None] + x_origin[None, :],
                     mask=k_mask[:, None] & p_mask[None, :], other=0.0).to(DOT)
        acc += tl.dot(w, xt, input_precision=PREC, out_dtype=ACC)
    for c0 in range(0, Cg, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        c_mask = c < Cg
        w = tl.load(pw_ptr + ci[:, None] * Cg + c[None, :],
                    mask=ci_mask[:, None] & c_mask[None, :], other=0.0)
        gt = _load_gate(g_b, c, c_mask, n, p_mask, Ng, Hg, Wg,
                        gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                        SAME_G, NZ, BLOCK_K, BLOCK_P, ACC)
        acc += tl.dot(w, gt.to(DOT), input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _attention_head(acc, ci, ci_mask, pb_ptr, sw_ptr, scal_ptr, FOCAL_ONE: tl.constexpr):
    """h = relu(acc + b_phi), sigmoid(q) and a = sigmoid(q) ** focal for a tile."""
    pb = tl.load(pb_ptr + ci, mask=ci_mask, other=0.0)
    sw = tl.load(sw_ptr + ci, mask=ci_mask, other=0.0)
    psi_bias = tl.load(scal_ptr)
    focal = tl.load(scal_ptr + 1)
    pre = acc + pb[:, None]
    h = tl.maximum(pre, 0.0)
    q = tl.sum(h * sw[:, None], axis=0) + psi_bias
    sig = 1.0 / (1.0 + tl.exp(-q))
    if FOCAL_ONE:
        a = sig
    else:
        a = tl.exp(focal * tl.log(sig))
    return h, sw, sig, a, focal


@triton.jit
def _alpha_at(a_b, m, m_mask, H, W, Hc, Wc,
              az_ptr, ay_ptr, ax_ptr, A_SAME: tl.constexpr, ACC: tl.constexpr):
    """alpha = resample(a) at fine pixels m of one item (a_b: coarse a of that item)."""
    if A_SAME:
        return tl.load(a_b + m, mask=m_mask, other=0.0)
    z0, z1, zl, y0, y1, yl, x0, x1, xl = _resample_taps(m, H, W, az_ptr, ay_ptr, ax_ptr, m_mask)
    out = tl.zeros(m.shape, ACC)
    for bz in tl.static_range(2):
        zi, wz = _lerp_corner(z0, z1, zl, bz)
        for by in tl.static_range(2):
            yi, wy = _lerp_corner(y0, y1, yl, by)
            for bx in tl.static_range(2):
                xi, wx = _lerp_corner(x0, x1, xl, bx)
                v = tl.load(a_b + (zi * Hc + yi) * Wc + xi, mask=m_mask, other=0.0)
                out += wz * wy * wx * v
    return out


# ----------------------------------------------------------------------------- forward
@triton.jit
def _coarse_kernel(x_ptr, g_ptr, tw_ptr, pw_ptr, pb_ptr, sw_ptr, scal_ptr, a_ptr,
                   gz_ptr, gy_ptr, gx_ptr,
                   Ci, K, Cx, Cg, N, Nc, Ng, H, W, Hc, Wc, Hg, Wg, TILES,
                   S: tl.constexpr, SD: tl.constexpr, SAME_G: tl.constexpr, NZ: tl.constexpr,
                   FOCAL_ONE: tl.constexpr, CI_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                   PREC: tl.constexpr, IDX64: tl.constexpr):
    b, n = _item_tile(tl.program_id(0), TILES, BLOCK_P, IDX64)
    p_mask = n < Nc
    ci = tl.arange(0, CI_PAD)
    ci_mask = ci < Ci
    x_origin = _patch_offsets(n, Hc, Wc, H, W, S, SD)
    gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl = _resample_taps(n, Hc, Wc, gz_ptr, gy_ptr,
                                                                 gx_ptr, p_mask)
    acc = _preactivation(x_ptr + b * Cx * N, g_ptr + b * Cg * Ng, tw_ptr, pw_ptr, ci, ci_mask,
                         n, p_mask, x_origin, gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                         K, Cg, N, Ng, H, W, Hg, Wg, S, SD, SAME_G, NZ, CI_PAD, BLOCK_K,
                         BLOCK_P, ACC, DOT, PREC, IDX64)
    h, sw, sig, a, focal = _attention_head(acc, ci, ci_mask, pb_ptr, sw_ptr, scal_ptr, FOCAL_ONE)
    tl.store(a_ptr + b * Nc + n, a, mask=p_mask)


@triton.jit
def _pixel_channel_tile(pid, TILES, CBLOCKS, N, Cx, BLOCK: tl.constexpr,
                        BLOCK_C: tl.constexpr, IDX64: tl.constexpr):
    """Program pid of a (item, pixel tile, channel block) grid flattened on axis 0: item b
    (int64), fine pixels m, channels c, their masks and the [BLOCK_C, BLOCK] offsets."""
    cb = pid % CBLOCKS
    b, m = _item_tile(pid // CBLOCKS, TILES, BLOCK, IDX64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    m_mask = m < N
    c_mask = c < Cx
    off = (b * Cx + c[:, None]) * N + m[None, :]
    return b, cb, m, m_mask, c_mask[:, None] & m_mask[None, :], off


@triton.jit
def _scale_kernel(x_ptr, a_ptr, y_ptr, alpha_ptr, az_ptr, ay_ptr, ax_ptr,
                  Cx, N, Nc, H, W, Hc, Wc, TILES, CBLOCKS,
                  A_SAME: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
                  ACC: tl.constexpr, IDX64: tl.constexpr):
    """y = resample(a) * x on a [BLOCK_C channels, BLOCK pixels] tile (pixels contiguous:
    vector loads); channel block 0 also writes alpha."""
    b, cb, m, m_mask, mask, off = _pixel_channel_tile(tl.program_id(0), TILES, CBLOCKS, N, Cx,
                                                      BLOCK, BLOCK_C, IDX64)
    alpha = _alpha_at(a_ptr + b * Nc, m, m_mask, H, W, Hc, Wc, az_ptr, ay_ptr, ax_ptr,
                      A_SAME, ACC)
    tl.store(alpha_ptr + b * N + m, alpha.to(alpha_ptr.dtype.element_ty),
             mask=m_mask & (cb == 0))
    xv = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + off, (alpha[None, :] * xv).to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _dalpha_kernel(gy_ptr, ga_ptr, x_ptr, out_ptr, Cx, N, TILES,
                   BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
                   IDX64: tl.constexpr):
    """out (B, N) = grad_alpha + sum_c grad_y * x on x's grid, reduced over channels in
    [BLOCK_C, BLOCK] tiles (BLOCK_C independent vector loads in flight per step)."""
    b, m = _item_tile(tl.program_id(0), TILES, BLOCK, IDX64)
    m_mask = m < N
    acc = tl.zeros((BLOCK_C, BLOCK), ACC)
    for c0 in range(0, Cx, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < Cx)[:, None] & m_mask[None, :]
        off = (b * Cx + c[:, None]) * N + m[None, :]
        acc += (tl.load(gy_ptr + off, mask=mask, other=0.0).to(ACC)
                * tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC))
    d = tl.load(ga_ptr + b * N + m, mask=m_mask, other=0.0).to(ACC) + tl.sum(acc, axis=0)
    tl.store(out_ptr + b * N + m, d, mask=m_mask)


@triton.jit
def _adjoint_kernel(v_ptr, u_ptr, iz_ptr, iy_ptr, ix_ptr,
                    N_IN, H_IN, W_IN, N_OUT, H_OUT, W_OUT, TZ, TY, TX, TILES,
                    BLOCK: tl.constexpr, ACC: tl.constexpr, IDX64: tl.constexpr):
    """u (R, N_IN) = resample^T(v (R, N_OUT)) as a gather in a fixed order: the inverted
    tables list, for every input index of an axis, T (output index, weight) pairs."""
    r, i = _item_tile(tl.program_id(0), TILES, BLOCK, IDX64)
    i_mask = i < N_IN
    xi = i % W_IN
    yi = (i // W_IN) % H_IN
    zi = i // (W_IN * H_IN)
    v_r = v_ptr + r * N_OUT
    out = tl.zeros((BLOCK,), ACC)
    for tz in range(0, TZ):
        oz = tl.load(iz_ptr + (zi * TZ + tz) * 2, mask=i_mask, other=0).to(tl.int32)
        wz = tl.load(iz_ptr + (zi * TZ + tz) * 2 + 1, mask=i_mask, other=0)
        for ty in range(0, TY):
            oy = tl.load(iy_ptr + (yi * TY + ty) * 2, mask=i_mask, other=0).to(tl.int32)
            wy = tl.load(iy_ptr + (yi * TY + ty) * 2 + 1, mask=i_mask, other=0)
            for tx in range(0, TX):
                ox = tl.load(ix_ptr + (xi * TX + tx) * 2, mask=i_mask, other=0).to(tl.int32)
                wx = tl.load(ix_ptr + (xi * TX + tx) * 2 + 1, mask=i_mask, other=0)
                v = tl.load(v_r + (oz * H_OUT + oy) * W_OUT + ox, mask=i_mask, other=0.0)
                out += (wz * wy * wx) * v.to(ACC)
    tl.store(u_ptr + r * N_IN + i, out.to(u_ptr.dtype.element_ty), mask=i_mask)


@triton.jit
def _tile_backward_kernel(x_ptr, g_ptr, tw_ptr, pw_ptr, pb_ptr, sw_ptr, scal_ptr, da_ptr,
                          a_ptr, gx_ptr, dg_ptr, dtw_ptr, dpw_ptr, dpb_ptr, dsw_ptr, dq_ptr,
                          gz_ptr, gy_ptr, gx_tab_ptr,
                          Ci, K, Cx, Cg, N, Nc, Ng, H, W, Hc, Wc, Hg, Wg, TILES, TOTAL,
                          NPROG,
                          S: tl.constexpr, SD: tl.constexpr, SAME_G: tl.constexpr,
                          NZ: tl.constexpr, FOCAL_ONE: tl.constexpr, CI_PAD: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
                          DOT: tl.constexpr, PREC: tl.constexpr, IDX64: tl.constexpr):
    """Tiles pid, pid + NPROG, ... of the B·TILES tiles. Weight gradients are summed in
    registers per tile and added, in tile order, to this program's own slot of partials
    (no atomics: deterministic; the slots are summed in a second pass). dq (B, Nc) is
    written for the second pass to sum into d psi_bias. dg: the g-grid gradient
    (SAME_G), else (B, Cg, Nc) coarse values that ``_adjoint_kernel`` gathers."""
    pid = tl.program_id(0)
    ci = tl.arange(0, CI_PAD)
    ci_mask = ci < Ci
    slot = pid.to(tl.int64)
    dtw_s = dtw_ptr + slot * Ci * K
    dpw_s = dpw_ptr + slot * Ci * Cg
    dpb_s = dpb_ptr + slot * Ci
    dsw_s = dsw_ptr + slot * Ci
    for tile in range(pid, TOTAL, NPROG):
        b, n = _item_tile(tile, TILES, BLOCK_P, IDX64)
        p_mask = n < Nc
        x_origin = _patch_offsets(n, Hc, Wc, H, W, S, SD)
        gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl = _resample_taps(n, Hc, Wc, gz_ptr, gy_ptr,
                                                                     gx_tab_ptr, p_mask)
        x_b = x_ptr + b * Cx * N
        g_b = g_ptr + b * Cg * Ng
        acc = _preactivation(x_b, g_b, tw_ptr, pw_ptr, ci, ci_mask, n, p_mask, x_origin,
                             gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                             K, Cg, N, Ng, H, W, Hg, Wg, S, SD, SAME_G, NZ, CI_PAD, BLOCK_K,
                             BLOCK_P, ACC, DOT, PREC, IDX64)
        h, sw, sig, a, focal = _attention_head(acc, ci, ci_mask, pb_ptr, sw_ptr, scal_ptr,
                                               FOCAL_ONE)
        tl.store(a_ptr + b * Nc + n, a, mask=p_mask)
        da = tl.load(da_ptr + b * Nc + n, mask=p_mask, other=0.0)
        dq = tl.where(p_mask, da * focal * a * (1.0 - sig), 0.0)
        # d psi_bias = sum of dq, summed by torch: reducing dq to a scalar here crashes
        # sm_100's TMEM layout pass (triton 3.7)
        tl.store(dq_ptr + b * Nc + n, dq, mask=p_mask)
        first = tile == pid
        _accumulate(dsw_s + ci, tl.sum(h * dq[None, :], axis=1), ci_mask, first)
        dpre = tl.where(h > 0.0, dq[None, :] * sw[:, None], 0.0)
        _accumulate(dpb_s + ci, tl.sum(dpre, axis=1), ci_mask, first)
        dpre_dot = dpre.to(DOT)
        gx_b = gx_ptr + b * Cx * N
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            wmask = ci_mask[:, None] & k_mask[None, :]
            koff = _k_offsets(k, N, H, W, S, SD, IDX64)
            xmask = k_mask[:, None] & p_mask[None, :]
            xt = tl.load(x_b + koff[:, None] + x_origin[None, :], mask=xmask, other=0.0).to(DOT)
            dw = tl.dot(dpre_dot, tl.trans(xt), input_precision=PREC, out_dtype=ACC)
            _accumulate(dtw_s + ci[:, None] * K + k[None, :], dw, wmask, first)
            w = tl.load(tw_ptr + ci[:, None] * K + k[None, :], mask=wmask, other=0.0)
            dx = tl.dot(tl.trans(w), dpre_dot, input_precision=PREC, out_dtype=ACC)
            tl.store(gx_b + koff[:, None] + x_origin[None, :],
                     dx.to(gx_ptr.dtype.element_ty), mask=xmask)
        for c0 in range(0, Cg, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            c_mask = c < Cg
            wmask = ci_mask[:, None] & c_mask[None, :]
            gt = _load_gate(g_b, c, c_mask, n, p_mask, Ng, Hg, Wg,
                            gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                            SAME_G, NZ, BLOCK_K, BLOCK_P, ACC)
            dw = tl.dot(dpre_dot, tl.trans(gt.to(DOT)), input_precision=PREC, out_dtype=ACC)
            _accumulate(dpw_s + ci[:, None] * Cg + c[None, :], dw, wmask, first)
            w = tl.load(pw_ptr + ci[:, None] * Cg + c[None, :], mask=wmask, other=0.0)
            dgt = tl.dot(tl.trans(w), dpre_dot, input_precision=PREC, out_dtype=ACC)
            # g's own grid (SAME_G) or coarse values that _adjoint_kernel gathers
            rows = dg_ptr + (b * Cg + c[:, None]) * Nc  # Nc == Ng when SAME_G
            tl.store(rows + n[None, :], dgt.to(dg_ptr.dtype.element_ty),
                     mask=c_mask[:, None] & p_mask[None, :])


@triton.jit
def _grad_x_kernel(gy_ptr, a_ptr, gx_ptr, az_ptr, ay_ptr, ax_ptr,
                   Cx, N, Nc, D, H, W, Hc, Wc, ZIN, YIN, XIN, TILES, CBLOCKS,
                   A_SAME: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
                   ACC: tl.constexpr, IDX64: tl.constexpr):
    """grad_x = (patch gradient where a patch covers the pixel) + grad_y * alpha, on a
    [BLOCK_C channels, BLOCK pixels] tile."""
    b, cb, m, m_mask, mask, off = _pixel_channel_tile(tl.program_id(0), TILES, CBLOCKS, N, Cx,
                                                      BLOCK, BLOCK_C, IDX64)
    alpha = _alpha_at(a_ptr + b * Nc, m, m_mask, H, W, Hc, Wc, az_ptr, ay_ptr, ax_ptr,
                      A_SAME, ACC)
    inside = ((m % W) < XIN) & (((m // W) % H) < YIN) & ((m // (W * H)) < ZIN)
    prev = tl.load(gx_ptr + off, mask=mask & inside[None, :], other=0.0).to(ACC)
    gyv = tl.load(gy_ptr + off, mask=mask, other=0.0).to(ACC)
    tl.store(gx_ptr + off, (prev + alpha[None, :] * gyv).to(gx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- tables
@functools.lru_cache(maxsize=256)
def _axis_table(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, 3) rows (i0, i1, l1) of F.interpolate(align_corners=False) along one axis,
    computed like ATen (ratio in the compute dtype; identity when n_in == n_out)."""
    o = torch.arange(n_out, dtype=dtype)
    if n_in == n_out:
        i0 = o.clone()
        i1 = o.clone()
        l1 = torch.zeros_like(o)
    else:
        ratio = torch.tensor(n_in, dtype=dtype) / torch.tensor(n_out, dtype=dtype)
        src = (ratio * (o + 0.5) - 0.5).clamp_min(0)
        i0 = torch.clamp(torch.floor(src), max=n_in - 1)
        l1 = (src - i0).clamp(0, 1)
        i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return torch.stack([i0, i1, l1], dim=1).contiguous().to(device)


@functools.lru_cache(maxsize=256)
def _inverse_table(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, int]:
    """The taps of :func:`_axis_table` listed per input index: ((n_in, T, 2) rows
    (output index, weight), zero-padded; T). Zero-weight taps are left out."""
    tab = _axis_table(n_in, n_out, dtype, torch.device("cpu"))
    o = torch.arange(n_out, dtype=dtype)
    src = torch.cat([tab[:, 0], tab[:, 1]]).long()
    rows = torch.stack([torch.cat([o, o]), torch.cat([1 - tab[:, 2], tab[:, 2]])], dim=1)
    keep = rows[:, 1] != 0
    src, rows = src[keep], rows[keep]
    order = torch.argsort(src * (2 * n_out) + rows[:, 0].long(), stable=True)
    src, rows = src[order], rows[order]
    counts = torch.bincount(src, minlength=n_in)
    width = max(1, int(counts.max()) if counts.numel() else 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(src.numel()) - start[src]
    out = torch.zeros((n_in, width, 2), dtype=dtype)
    out[src, slot] = rows
    return out.contiguous().to(device), width


# ----------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class GateShape:
    """Geometry of one gate problem (2D as 3D with depth 1)."""

    B: int
    Cx: int
    Cg: int
    Ci: int
    S: int
    SD: int
    D: int
    H: int
    W: int
    Dg: int
    Hg: int
    Wg: int

    @classmethod
    def of(cls, x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor,
           subsample: int) -> "GateShape":
        three = x.dim() == 5
        d, h, w = x.shape[2:] if three else (1, *x.shape[2:])
        dg, hg, wg = g.shape[2:] if three else (1, *g.shape[2:])
        return cls(x.shape[0], x.shape[1], g.shape[1], theta_weight.shape[0], subsample,
                   subsample if three else 1, d, h, w, dg, hg, wg)

    @property
    def coarse(self) -> tuple[int, int, int]:
        return self.D // self.SD, self.H // self.S, self.W // self.S

    @property
    def N(self) -> int:
        return self.D * self.H * self.W

    @property
    def Nc(self) -> int:
        dc, hc, wc = self.coarse
        return dc * hc * wc

    @property
    def Ng(self) -> int:
        return self.Dg * self.Hg * self.Wg

    @property
    def K(self) -> int:
        return self.Cx * self.SD * self.S * self.S

    @property
    def idx64(self) -> bool:
        return needs_int64(self.Cx * self.N, self.Cg * self.Ng, self.Cg * self.Nc,
                           self.N + 4096)


@dataclass(frozen=True)
class TileConfig:
    """Launch configuration of a tile kernel (coarse forward or tile backward)."""

    ci_pad: int
    block_k: int
    block_p: int
    num_warps: int
    tiles: int
    nprog: int
    grid: tuple[int, ...]
    dot: object
    precision: str


@dataclass(frozen=True)
class PixelConfig:
    """Launch configuration of a kernel over [block_c channels, block pixels] tiles of
    ``rows`` items: ``tiles`` pixel tiles and ``cblocks`` channel blocks per item (1 when
    the kernel loops over the channels itself)."""

    block: int
    block_c: int
    num_warps: int
    tiles: int
    cblocks: int
    grid: tuple[int, ...]


#: Programs per SM every launch aims for (latency hiding without relying on one wave).
PROGRAMS_PER_SM = 4
#: Elements of a pixel tile (loads in flight per program).
PIXEL_TILE = 4096


def min_programs(target: Target) -> int:
    """Programs a GPU launch should have to fill the device."""
    return PROGRAMS_PER_SM * target.num_sms if target.gpu else 1


def _tile_blocks(gs: GateShape, dtype: torch.dtype, target: Target, backward: bool
                 ) -> tuple[int, int, int, int]:
    """(CI_PAD, BLOCK_K, BLOCK_P, num_warps): every dot edge >= 16, and on GPUs a
    (CI_PAD, BLOCK_P) tile of <= 4096 (fp64: 1024; backward: half) elements, halved while
    the launch would have fewer than :func:`min_programs` tiles. The fp64 bound keeps the
    pipelined (BLOCK_K, BLOCK_P) operand tiles within an A100's shared memory."""
    ci_pad = max(MIN_DOT, next_pow2(gs.Ci))
    if not target.gpu:
        return ci_pad, MIN_DOT, MIN_DOT, 4
    budget = 4096 if dtype != torch.float64 else 1024
    if backward:
        budget //= 2
    block_p = max(MIN_DOT, min(128, budget // ci_pad, next_pow2(gs.Nc)))
    while block_p > MIN_DOT and gs.B * triton.cdiv(gs.Nc, block_p) < min_programs(target):
        block_p //= 2
    block_k = 32 if ci_pad <= 64 else MIN_DOT
    num_warps = 4 if ci_pad * block_p <= 2048 else 8
    return ci_pad, block_k, block_p, num_warps


def coarse_config(gs: GateShape, dtype: torch.dtype, target: Target) -> TileConfig:
    """Configuration of ``_coarse_kernel`` for inputs of ``dtype``."""
    ci_pad, block_k, block_p, warps = _tile_blocks(gs, dtype, target, backward=False)
    tiles = triton.cdiv(gs.Nc, block_p)
    grid = check_grid((gs.B * tiles,), "attention_gate (coarse)")
    dot, prec = dot_operands(dtype, target)
    return TileConfig(ci_pad, block_k, block_p, warps, tiles, grid[0], grid, dot, prec)


def tile_backward_config(gs: GateShape, dtype: torch.dtype, target: Target) -> TileConfig:
    """Configuration of ``_tile_backward_kernel``: a fixed number of programs
    (:func:`min_programs`, weight-gradient slots within 64 MiB) that each own a slot of
    partial weight gradients and walk the tiles pid, pid + nprog, ..."""
    ci_pad, block_k, block_p, warps = _tile_blocks(gs, dtype, target, backward=True)
    tiles = triton.cdiv(gs.Nc, block_p)
    acc_bytes = 8 if dtype == torch.float64 else 4
    slot_bytes = gs.Ci * (gs.K + gs.Cg + 2) * acc_bytes
    cap = min_programs(target) if target.gpu else 4
    nprog = max(1, min(gs.B * tiles, cap, (64 << 20) // slot_bytes))
    grid = check_grid((nprog,), "attention_gate (tile backward)")
    dot, prec = dot_operands(dtype, target)
    return TileConfig(ci_pad, block_k, block_p, warps, tiles, nprog, grid, dot, prec)


def _pixel_config(rows: int, n: int, channels: int, target: Target, kernel: str,
                  split_channels: bool) -> PixelConfig:
    """[block_c, block] tiles of PIXEL_TILE elements (block pixels contiguous for vector
    loads), made smaller — channel blocks first if ``split_channels`` — until the launch
    has :func:`min_programs` programs (or tiles of 32 pixels)."""
    if not target.gpu:  # the interpreter: few, large programs
        block = 128
        block_c = min(next_pow2(channels), 8)
    else:
        block = min(1024 if split_channels else 256, next_pow2(n))
        block_c = min(next_pow2(channels), max(1, PIXEL_TILE // block))

        def programs() -> int:
            cb = triton.cdiv(channels, block_c) if split_channels else 1
            return rows * triton.cdiv(n, block) * cb

        while programs() < min_programs(target):
            if split_channels and block_c > 1:
                block_c //= 2
            elif block > 32:
                block //= 2
                if not split_channels:
                    block_c = min(next_pow2(channels), max(1, PIXEL_TILE // block))
            else:
                break
    tiles = triton.cdiv(n, block)
    cblocks = triton.cdiv(channels, block_c) if split_channels else 1
    warps = max(1, min(4, block * block_c // 256))
    return PixelConfig(block, block_c, warps, tiles, cblocks,
                       check_grid((rows * tiles * cblocks,), kernel))


def scale_config(gs: GateShape, dtype: torch.dtype, target: Target) -> PixelConfig:
    """Configuration of ``_scale_kernel`` (item x pixel tile x channel block programs)."""
    return _pixel_config(gs.B, gs.N, gs.Cx, target, "attention_gate (scale)", True)


def dalpha_config(gs: GateShape, dtype: torch.dtype, target: Target) -> PixelConfig:
    """Configuration of ``_dalpha_kernel`` (item x pixel tile programs; channels looped)."""
    return _pixel_config(gs.B, gs.N, gs.Cx, target, "attention_gate (d alpha)", False)


def grad_x_config(gs: GateShape, dtype: torch.dtype, target: Target) -> PixelConfig:
    """Configuration of ``_grad_x_kernel`` (item x pixel tile x channel block programs)."""
    return _pixel_config(gs.B, gs.N, gs.Cx, target, "attention_gate (grad x)", True)


def adjoint_config(rows: int, n_in: int, dtype: torch.dtype, target: Target) -> PixelConfig:
    """Configuration of ``_adjoint_kernel`` over (rows, n_in) outputs."""
    return _pixel_config(rows, n_in, 1, target, "attention_gate (adjoint resample)", True)


class _Launch:
    """Shape, target, tables and converted weights shared by a forward or backward."""

    def __init__(self, x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor,
                 subsample: int, focal: float):
        self.gs = gs = GateShape.of(x, g, theta_weight, subsample)
        self.target = target_for(x.device)
        self.dtype = x.dtype
        self.acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.tl_acc = TL_DTYPES[self.acc]
        dev = x.device
        dc, hc, wc = gs.coarse
        self.g_axes = ((gs.Dg, dc), (gs.Hg, hc), (gs.Wg, wc))
        self.a_axes = ((dc, gs.D), (hc, gs.H), (wc, gs.W))
        self.g_tabs = [_axis_table(i, o, self.acc, dev) for i, o in self.g_axes]
        self.a_tabs = [_axis_table(i, o, self.acc, dev) for i, o in self.a_axes]
        self.same_g = (gs.Dg, gs.Hg, gs.Wg) == (dc, hc, wc)
        self.same_a = (dc, hc, wc) == (gs.D, gs.H, gs.W)
        self.nz = 1 if gs.Dg == dc else 2
        self.focal = focal
        self.idx64 = gs.idx64

    def weights(self, tw, pw, pb, sw, sb, dot_dtype):
        """theta/phi weights in the dot operand dtype, the rest in the accumulation dtype."""
        acc, gs = self.acc, self.gs
        wdt = {tl.float16: torch.float16, tl.bfloat16: torch.bfloat16, tl.float32: torch.float32,
               tl.float64: torch.float64}[dot_dtype]
        scal = torch.cat([sb.reshape(1).to(acc),
                          torch.full((1,), self.focal, dtype=acc, device=sb.device)])
        return (tw.reshape(gs.Ci, gs.K).to(wdt).contiguous(), pw.to(wdt).contiguous(),
                pb.to(acc).contiguous(), sw.to(acc).contiguous(), scal)

    def dims(self):
        gs = self.gs
        dc, hc, wc = gs.coarse
        return (gs.Ci, gs.K, gs.Cx, gs.Cg, gs.N, gs.Nc, gs.Ng, gs.H, gs.W, hc, wc, gs.Hg, gs.Wg)

    def tile_meta(self, cfg: TileConfig) -> dict:
        gs = self.gs
        return dict(S=gs.S, SD=gs.SD, SAME_G=self.same_g, NZ=self.nz,
                    FOCAL_ONE=self.focal == 1.0, CI_PAD=cfg.ci_pad, BLOCK_K=cfg.block_k,
                    BLOCK_P=cfg.block_p, ACC=self.tl_acc, DOT=cfg.dot, PREC=cfg.precision,
                    IDX64=self.idx64, num_warps=cfg.num_warps)

    def pixel_meta(self, cfg: PixelConfig, channels: bool = True) -> dict:
        meta = dict(BLOCK=cfg.block, ACC=self.tl_acc, IDX64=self.idx64, num_warps=cfg.num_warps)
        if channels:
            meta["BLOCK_C"] = cfg.block_c
        return meta

    def adjoint(self, v: torch.Tensor, rows: int, axes, out_dtype: torch.dtype) -> torch.Tensor:
        """u (rows, N_in) = resample^T(v (rows, N_out)) for resampling ``axes`` ((in, out)
        per axis), gathered in a fixed order (deterministic)."""
        dev = v.device
        tabs = [_inverse_table(i, o, self.acc, dev) for i, o in axes]
        (din, dout), (hin, hout), (win, wout) = axes
        n_in = din * hin * win
        u = torch.empty((rows, n_in), dtype=out_dtype, device=dev)
        cfg = adjoint_config(rows, n_in, self.dtype, self.target)
        _adjoint_kernel[cfg.grid](v, u, *(t for t, _ in tabs), n_in, hin, win,
                                  dout * hout * wout, hout, wout, *(w for _, w in tabs),
                                  cfg.tiles, **self.pixel_meta(cfg, channels=False))
        return u


def attention_gate_forward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, *,
                           subsample: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernels; contiguous inputs of one dtype. Returns (y, alpha)."""
    L = _Launch(x, g, theta_weight, subsample, focal)
    gs = L.gs
    cfg = coarse_config(gs, x.dtype, L.target)
    tw, pw, pb, sw, scal = L.weights(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                     cfg.dot)
    a = torch.empty((gs.B, gs.Nc), dtype=L.acc, device=x.device)
    _coarse_kernel[cfg.grid](x, g, tw, pw, pb, sw, scal, a, *L.g_tabs, *L.dims(), cfg.tiles,
                             **L.tile_meta(cfg))
    y = torch.empty_like(x)
    alpha = x.new_empty((gs.B, 1, *x.shape[2:]))
    dc, hc, wc = gs.coarse
    pcfg = scale_config(gs, x.dtype, L.target)
    _scale_kernel[pcfg.grid](x, a, y, alpha, *L.a_tabs, gs.Cx, gs.N, gs.Nc, gs.H, gs.W, hc, wc,
                             pcfg.tiles, pcfg.cblocks, A_SAME=L.same_a, **L.pixel_meta(pcfg))
    return y, alpha


def attention_gate_backward(grad_y, grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                            psi_weight, psi_bias, *, subsample: int, focal: float):
    """Launch the backward kernels. Returns the gradients of x, g, theta_weight,
    phi_weight, phi_bias, psi_weight and psi_bias (shaped like them; psi_bias as (1,)).
    No float atomics: every result is the same bit for bit from run to run."""
    L = _Launch(x, g, theta_weight, subsample, focal)
    gs, dev, acc = L.gs, x.device, L.acc
    dc, hc, wc = gs.coarse
    # d alpha on x's grid, then on the coarse grid (an ordered gather if the grids differ)
    pcfg = dalpha_config(gs, x.dtype, L.target)
    d_fine = torch.empty((gs.B, gs.N), dtype=acc, device=dev)
    _dalpha_kernel[pcfg.grid](grad_y, grad_alpha, x, d_fine, gs.Cx, gs.N, pcfg.tiles,
                              **L.pixel_meta(pcfg))
    da = d_fine if L.same_a else L.adjoint(d_fine, gs.B, L.a_axes, acc)
    # recompute the tiles; weight, patch and g gradients
    cfg = tile_backward_config(gs, x.dtype, L.target)
    tw, pw, pb, sw, scal = L.weights(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                     cfg.dot)
    a = torch.empty((gs.B, gs.Nc), dtype=acc, device=dev)
    grad_x = torch.empty_like(x)
    grad_g = (torch.empty_like(g) if L.same_g
              else torch.empty((gs.B, gs.Cg, gs.Nc), dtype=acc, device=dev))
    dtw = torch.empty((cfg.nprog, gs.Ci, gs.K), dtype=acc, device=dev)
    dpw = torch.empty((cfg.nprog, gs.Ci, gs.Cg), dtype=acc, device=dev)
    dpb = torch.empty((cfg.nprog, gs.Ci), dtype=acc, device=dev)
    dsw = torch.empty((cfg.nprog, gs.Ci), dtype=acc, device=dev)
    dq = torch.empty((gs.B, gs.Nc), dtype=acc, device=dev)
    _tile_backward_kernel[cfg.grid](x, g, tw, pw, pb, sw, scal, da, a, grad_x, grad_g,
                                    dtw, dpw, dpb, dsw, dq, *L.g_tabs, *L.dims(), cfg.tiles,
                                    gs.B * cfg.tiles, cfg.nprog, **L.tile_meta(cfg))
    if not L.same_g:
        grad_g = L.adjoint(grad_g, gs.B * gs.Cg, L.g_axes, x.dtype).reshape(g.shape)
    xcfg = grad_x_config(gs, x.dtype, L.target)
    _grad_x_kernel[xcfg.grid](grad_y, a, grad_x, *L.a_tabs, gs.Cx, gs.N, gs.Nc, gs.D, gs.H,
                              gs.W, hc, wc, dc * gs.SD, hc * gs.S, wc * gs.S, xcfg.tiles,
                              xcfg.cblocks, A_SAME=L.same_a, **L.pixel_meta(xcfg))
    dt = x.dtype
    return (grad_x, grad_g.to(dt), dtw.sum(0).reshape(theta_weight.shape).to(dt),
            dpw.sum(0).to(dt), dpb.sum(0).to(dt), dsw.sum(0).to(dt), dq.sum().reshape(1).to(dt))
