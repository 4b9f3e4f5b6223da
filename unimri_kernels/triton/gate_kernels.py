"""Triton kernels of the fused attention gate (SAS); launchers in :mod:`.attention_gate`,
design and traffic in docs/gpu_kernels.md, maths in
:mod:`unimri_kernels.reference.attention_gate`. 2D inputs run as 3D with depth 1.
"""
from __future__ import annotations

import triton
import triton.language as tl

from unimri_kernels.triton.gate_tiles import (_accumulate, _alpha_at, _attention_head,
                                              _item_tile, _k_offsets, _load_gate,
                                              _patch_offsets, _pixel_channel_tile,
                                              _preactivation, _resample_taps)


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
def _scale_kernel(x_ptr, a_ptr, y_ptr, alpha_ptr, az_ptr, ay_ptr, ax_ptr,
                  Cx, N, Nc, H, W, Hc, Wc, ZIN, YIN, XIN, TILES, CBLOCKS,
                  A_SAME: tl.constexpr, OUTSIDE_ONLY: tl.constexpr, BLOCK: tl.constexpr,
                  BLOCK_C: tl.constexpr, ACC: tl.constexpr, IDX64: tl.constexpr):
    """y = resample(a) * x on a [BLOCK_C channels, BLOCK pixels] tile (pixels contiguous:
    vector loads); channel block 0 also writes alpha. OUTSIDE_ONLY (the backward's
    grad_x = grad_y * alpha where no patch covers a pixel): only pixels outside the
    [ZIN, YIN, XIN] box, and no alpha."""
    b, cb, m, m_mask, mask, off = _pixel_channel_tile(tl.program_id(0), TILES, CBLOCKS, N, Cx,
                                                      BLOCK, BLOCK_C, IDX64)
    if OUTSIDE_ONLY:
        inside = ((m % W) < XIN) & (((m // W) % H) < YIN) & ((m // (W * H)) < ZIN)
        m_mask = m_mask & ~inside
        mask = mask & m_mask[None, :]
    alpha = _alpha_at(a_ptr + b * Nc, m, m_mask, H, W, Hc, Wc, az_ptr, ay_ptr, ax_ptr,
                      A_SAME, ACC)
    if not OUTSIDE_ONLY:
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
                          a_ptr, dpre_ptr, dg_ptr, dtw_ptr, dpw_ptr, dpb_ptr, dsw_ptr, dq_ptr,
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
    written for the second pass to sum into d psi_bias, d pre (B, Ci, Nc) in the dot dtype
    for ``_grad_x_kernel``. dg: the g-grid gradient (SAME_G), else (B, Cg, Nc) coarse
    values that ``_adjoint_kernel`` gathers."""
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
        tl.store(dpre_ptr + (b * Ci + ci[:, None]) * Nc + n[None, :], dpre_dot,
                 mask=ci_mask[:, None] & p_mask[None, :])
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            wmask = ci_mask[:, None] & k_mask[None, :]
            koff = _k_offsets(k, N, H, W, S, SD, IDX64)
            xmask = k_mask[:, None] & p_mask[None, :]
            xt = tl.load(x_b + koff[:, None] + x_origin[None, :], mask=xmask, other=0.0).to(DOT)
            dw = tl.dot(dpre_dot, tl.trans(xt), input_precision=PREC, out_dtype=ACC)
            _accumulate(dtw_s + ci[:, None] * K + k[None, :], dw, wmask, first)
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
def _grad_x_kernel(gy_ptr, a_ptr, dpre_ptr, tw_ptr, gx_ptr, az_ptr, ay_ptr, ax_ptr,
                   Ci, K, Cx, N, Nc, H, W, Hc, Wc, TILES, CBLOCKS,
                   S: tl.constexpr, SD: tl.constexpr, A_SAME: tl.constexpr,
                   CI_PAD: tl.constexpr, CI_BLOCK: tl.constexpr, BLOCK_CX: tl.constexpr,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                   PREC: tl.constexpr, IDX64: tl.constexpr):
    """grad_x = W_theta^T d pre (the patch gradient) + grad_y * alpha, written once, for
    BLOCK_P coarse pixels x BLOCK_CX channels: per patch position (dz, dy, dx), a
    (BLOCK_CX, CI_PAD) x (CI_PAD, BLOCK_P) product in CI_BLOCK chunks (``tl.dot``).
    Pixels that no patch covers (x's size not a multiple of the stride) are
    ``_scale_kernel``'s with OUTSIDE_ONLY."""
    pid = tl.program_id(0)
    cb = pid % CBLOCKS
    b, n = _item_tile(pid // CBLOCKS, TILES, BLOCK_P, IDX64)
    p_mask = n < Nc
    c = cb * BLOCK_CX + tl.arange(0, BLOCK_CX)
    c_mask = c < Cx
    origin = _patch_offsets(n, Hc, Wc, H, W, S, SD)
    mask = c_mask[:, None] & p_mask[None, :]
    rows = (b * Cx + c[:, None]) * N
    for par in tl.static_range(SD * S * S):
        dx = tl.zeros((BLOCK_CX, BLOCK_P), ACC)
        for ci0 in range(0, CI_PAD, CI_BLOCK):
            ci = ci0 + tl.arange(0, CI_BLOCK)
            ci_mask = ci < Ci
            dpre = tl.load(dpre_ptr + (b * Ci + ci[:, None]) * Nc + n[None, :],
                           mask=ci_mask[:, None] & p_mask[None, :], other=0.0)
            # k = ((c·SD + dz)·S + dy)·S + dx = c·SD·S² + par
            w = tl.load(tw_ptr + ci[:, None] * K + (c * (SD * S * S) + par)[None, :],
                        mask=ci_mask[:, None] & c_mask[None, :], other=0.0)
            dx += tl.dot(tl.trans(w), dpre, input_precision=PREC, out_dtype=ACC)
        m = origin + ((par // (S * S)) * H * W + ((par // S) % S) * W + par % S)
        alpha = _alpha_at(a_ptr + b * Nc, m, p_mask, H, W, Hc, Wc, az_ptr, ay_ptr, ax_ptr,
                          A_SAME, ACC)
        gyv = tl.load(gy_ptr + rows + m[None, :], mask=mask, other=0.0).to(ACC)
        tl.store(gx_ptr + rows + m[None, :], (dx + alpha[None, :] * gyv).to(gx_ptr.dtype.element_ty),
                 mask=mask)
