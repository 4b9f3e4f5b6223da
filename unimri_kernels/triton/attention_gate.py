"""Triton kernels of the fused attention gate (SAS) and their launchers.

Maths: :mod:`unimri_kernels.reference.attention_gate`. 2D inputs run as 3D with depth 1.
Kernels (one program per tile of BLOCK_P coarse pixels or BLOCK fine pixels of one item):

* ``_coarse_kernel``: pre = W_theta @ patches(x) + W_phi @ resample(g) accumulated in
  registers over K and Cg blocks (``tl.dot``), then relu, psi, sigmoid, ``** focal``; writes
  only the coarse attention a (B, Nc). The (B, Ci, Nc) tensor is never written.
* ``_scale_kernel``: alpha = resample(a) on x's grid; y = alpha * x for every channel.
* backward: ``_dalpha_kernel`` (d alpha = grad_alpha + sum_c grad_y * x, scattered to the
  coarse grid), ``_tile_backward_kernel`` (recomputes pre, then weight / patch / g grads),
  ``_grad_x_kernel`` (adds grad_y * alpha).

Arithmetic is fp32 (fp64 for fp64 inputs); dots use IEEE precision. Weight gradients and
off-grid scatters use atomics on fp32/fp64 buffers. Everything is masked so the kernels
also run under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _lerp_corner(i0, i1, l1, BIT: tl.constexpr):
    """Index and weight of one of the two linear-interpolation taps (BIT 0 or 1)."""
    if BIT == 0:
        return i0, 1.0 - l1
    else:
        return i1, l1


@triton.jit
def _patch_offsets(n, Hc, Wc, H, W, S: tl.constexpr, SD: tl.constexpr):
    """Offset, inside an x plane, of the patch corner of coarse pixel n."""
    xc = n % Wc
    yc = (n // Wc) % Hc
    zc = n // (Wc * Hc)
    return (zc * SD) * (H * W) + (yc * S) * W + xc * S


@triton.jit
def _k_offsets(k, N, H, W, S: tl.constexpr, SD: tl.constexpr):
    """Offset of patch entry k = (c, dz, dy, dx) relative to its patch corner."""
    dx = k % S
    dy = (k // S) % S
    dz = (k // (S * S)) % SD
    c = k // (SD * S * S)
    return c * N + dz * (H * W) + dy * W + dx


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
def _scatter_gate(dg_b, vals, c, c_mask, n, p_mask, Ng, Hg, Wg,
                  gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                  SAME_G: tl.constexpr, NZ: tl.constexpr):
    """Adjoint of :func:`_load_gate`: vals (BLOCK_K, BLOCK_P) into the g-grid gradient."""
    mask = c_mask[:, None] & p_mask[None, :]
    rows = dg_b + c[:, None].to(tl.int64) * Ng
    if SAME_G:
        tl.store(rows + n[None, :], vals.to(dg_b.dtype.element_ty), mask=mask)
    else:
        for bz in tl.static_range(NZ):
            zi, wz = _lerp_corner(gz0, gz1, gzl, bz)
            for by in tl.static_range(2):
                yi, wy = _lerp_corner(gy0, gy1, gyl, by)
                for bx in tl.static_range(2):
                    xi, wx = _lerp_corner(gx0, gx1, gxl, bx)
                    off = (zi * Hg + yi) * Wg + xi
                    tl.atomic_add(rows + off[None, :], (wz * wy * wx)[None, :] * vals, mask=mask)


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
                   ACC: tl.constexpr):
    """W_theta @ patches + W_phi @ resample(g) for one tile: (CI_PAD, BLOCK_P), no bias."""
    acc = tl.zeros((CI_PAD, BLOCK_P), ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        w = tl.load(tw_ptr + ci[:, None] * K + k[None, :],
                    mask=ci_mask[:, None] & k_mask[None, :], other=0.0)
        koff = _k_offsets(k, N, H, W, S, SD)
        xt = tl.load(x_b + koff[:, None].to(tl.int64) + x_origin[None, :],
                     mask=k_mask[:, None] & p_mask[None, :], other=0.0).to(ACC)
        acc += tl.dot(w, xt, input_precision="ieee", out_dtype=ACC)
    for c0 in range(0, Cg, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        c_mask = c < Cg
        w = tl.load(pw_ptr + ci[:, None] * Cg + c[None, :],
                    mask=ci_mask[:, None] & c_mask[None, :], other=0.0)
        gt = _load_gate(g_b, c, c_mask, n, p_mask, Ng, Hg, Wg,
                        gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                        SAME_G, NZ, BLOCK_K, BLOCK_P, ACC)
        acc += tl.dot(w, gt, input_precision="ieee", out_dtype=ACC)
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
                   Ci, K, Cx, Cg, N, Nc, Ng, H, W, Hc, Wc, Hg, Wg,
                   S: tl.constexpr, SD: tl.constexpr, SAME_G: tl.constexpr, NZ: tl.constexpr,
                   FOCAL_ONE: tl.constexpr, CI_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = n < Nc
    ci = tl.arange(0, CI_PAD)
    ci_mask = ci < Ci
    x_origin = _patch_offsets(n, Hc, Wc, H, W, S, SD)
    gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl = _resample_taps(n, Hc, Wc, gz_ptr, gy_ptr,
                                                                 gx_ptr, p_mask)
    acc = _preactivation(x_ptr + b * Cx * N, g_ptr + b * Cg * Ng, tw_ptr, pw_ptr, ci, ci_mask,
                         n, p_mask, x_origin, gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                         K, Cg, N, Ng, H, W, Hg, Wg, S, SD, SAME_G, NZ, CI_PAD, BLOCK_K,
                         BLOCK_P, ACC)
    h, sw, sig, a, focal = _attention_head(acc, ci, ci_mask, pb_ptr, sw_ptr, scal_ptr, FOCAL_ONE)
    tl.store(a_ptr + b * Nc + n, a, mask=p_mask)


@triton.jit
def _scale_kernel(x_ptr, a_ptr, y_ptr, alpha_ptr, az_ptr, ay_ptr, ax_ptr,
                  Cx, N, Nc, H, W, Hc, Wc,
                  A_SAME: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_mask = m < N
    alpha = _alpha_at(a_ptr + b * Nc, m, m_mask, H, W, Hc, Wc, az_ptr, ay_ptr, ax_ptr,
                      A_SAME, ACC)
    tl.store(alpha_ptr + b * N + m, alpha.to(alpha_ptr.dtype.element_ty), mask=m_mask)
    for c in range(0, Cx):
        off = (b * Cx + c) * N + m
        xv = tl.load(x_ptr + off, mask=m_mask, other=0.0).to(ACC)
        tl.store(y_ptr + off, (alpha * xv).to(y_ptr.dtype.element_ty), mask=m_mask)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _dalpha_kernel(gy_ptr, ga_ptr, x_ptr, da_ptr, az_ptr, ay_ptr, ax_ptr,
                   Cx, N, Nc, H, W, Hc, Wc,
                   A_SAME: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """d a (B, Nc) += resample^T(grad_alpha + sum_c grad_y * x); da zeroed unless A_SAME."""
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_mask = m < N
    d = tl.load(ga_ptr + b * N + m, mask=m_mask, other=0.0).to(ACC)
    for c in range(0, Cx):
        off = (b * Cx + c) * N + m
        d += (tl.load(gy_ptr + off, mask=m_mask, other=0.0).to(ACC)
              * tl.load(x_ptr + off, mask=m_mask, other=0.0).to(ACC))
    da_b = da_ptr + b * Nc
    if A_SAME:
        tl.store(da_b + m, d, mask=m_mask)
    else:
        x = m % W
        y = (m // W) % H
        z = m // (W * H)
        z0 = tl.load(az_ptr + 3 * z, mask=m_mask, other=0).to(tl.int32)
        z1 = tl.load(az_ptr + 3 * z + 1, mask=m_mask, other=0).to(tl.int32)
        zl = tl.load(az_ptr + 3 * z + 2, mask=m_mask, other=0)
        y0 = tl.load(ay_ptr + 3 * y, mask=m_mask, other=0).to(tl.int32)
        y1 = tl.load(ay_ptr + 3 * y + 1, mask=m_mask, other=0).to(tl.int32)
        yl = tl.load(ay_ptr + 3 * y + 2, mask=m_mask, other=0)
        x0 = tl.load(ax_ptr + 3 * x, mask=m_mask, other=0).to(tl.int32)
        x1 = tl.load(ax_ptr + 3 * x + 1, mask=m_mask, other=0).to(tl.int32)
        xl = tl.load(ax_ptr + 3 * x + 2, mask=m_mask, other=0)
        for bz in tl.static_range(2):
            zi, wz = _lerp_corner(z0, z1, zl, bz)
            for by in tl.static_range(2):
                yi, wy = _lerp_corner(y0, y1, yl, by)
                for bx in tl.static_range(2):
                    xi, wx = _lerp_corner(x0, x1, xl, bx)
                    tl.atomic_add(da_b + (zi * Hc + yi) * Wc + xi, wz * wy * wx * d, mask=m_mask)


@triton.jit
def _tile_backward_kernel(x_ptr, g_ptr, tw_ptr, pw_ptr, pb_ptr, sw_ptr, scal_ptr, da_ptr,
                          a_ptr, gx_ptr, dg_ptr, dtw_ptr, dpw_ptr, dpb_ptr, dsw_ptr, dsb_ptr,
                          gz_ptr, gy_ptr, gx_tab_ptr,
                          Ci, K, Cx, Cg, N, Nc, Ng, H, W, Hc, Wc, Hg, Wg,
                          S: tl.constexpr, SD: tl.constexpr, SAME_G: tl.constexpr,
                          NZ: tl.constexpr, FOCAL_ONE: tl.constexpr, CI_PAD: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = n < Nc
    ci = tl.arange(0, CI_PAD)
    ci_mask = ci < Ci
    x_origin = _patch_offsets(n, Hc, Wc, H, W, S, SD)
    gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl = _resample_taps(n, Hc, Wc, gz_ptr, gy_ptr,
                                                                 gx_tab_ptr, p_mask)
    x_b = x_ptr + b * Cx * N
    g_b = g_ptr + b * Cg * Ng
    acc = _preactivation(x_b, g_b, tw_ptr, pw_ptr, ci, ci_mask, n, p_mask, x_origin,
                         gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                         K, Cg, N, Ng, H, W, Hg, Wg, S, SD, SAME_G, NZ, CI_PAD, BLOCK_K,
                         BLOCK_P, ACC)
    h, sw, sig, a, focal = _attention_head(acc, ci, ci_mask, pb_ptr, sw_ptr, scal_ptr, FOCAL_ONE)
    tl.store(a_ptr + b * Nc + n, a, mask=p_mask)
    da = tl.load(da_ptr + b * Nc + n, mask=p_mask, other=0.0)
    dq = tl.where(p_mask, da * focal * a * (1.0 - sig), 0.0)
    tl.atomic_add(dsb_ptr, tl.sum(dq, axis=0))
    tl.atomic_add(dsw_ptr + ci, tl.sum(h * dq[None, :], axis=1), mask=ci_mask)
    dpre = tl.where(h > 0.0, dq[None, :] * sw[:, None], 0.0)
    tl.atomic_add(dpb_ptr + ci, tl.sum(dpre, axis=1), mask=ci_mask)
    gx_b = gx_ptr + b * Cx * N
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        wmask = ci_mask[:, None] & k_mask[None, :]
        koff = _k_offsets(k, N, H, W, S, SD)
        xmask = k_mask[:, None] & p_mask[None, :]
        xt = tl.load(x_b + koff[:, None].to(tl.int64) + x_origin[None, :], mask=xmask,
                     other=0.0).to(ACC)
        dw = tl.dot(dpre, tl.trans(xt), input_precision="ieee", out_dtype=ACC)
        tl.atomic_add(dtw_ptr + ci[:, None] * K + k[None, :], dw, mask=wmask)
        w = tl.load(tw_ptr + ci[:, None] * K + k[None, :], mask=wmask, other=0.0)
        dx = tl.dot(tl.trans(w), dpre, input_precision="ieee", out_dtype=ACC)
        tl.store(gx_b + koff[:, None].to(tl.int64) + x_origin[None, :],
                 dx.to(gx_ptr.dtype.element_ty), mask=xmask)
    dg_b = dg_ptr + b * Cg * Ng
    for c0 in range(0, Cg, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        c_mask = c < Cg
        wmask = ci_mask[:, None] & c_mask[None, :]
        gt = _load_gate(g_b, c, c_mask, n, p_mask, Ng, Hg, Wg,
                        gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl,
                        SAME_G, NZ, BLOCK_K, BLOCK_P, ACC)
        dw = tl.dot(dpre, tl.trans(gt), input_precision="ieee", out_dtype=ACC)
        tl.atomic_add(dpw_ptr + ci[:, None] * Cg + c[None, :], dw, mask=wmask)
        w = tl.load(pw_ptr + ci[:, None] * Cg + c[None, :], mask=wmask, other=0.0)
        dgt = tl.dot(tl.trans(w), dpre, input_precision="ieee", out_dtype=ACC)
        _scatter_gate(dg_b, dgt, c, c_mask, n, p_mask, Ng, Hg, Wg,
                      gz0, gz1, gzl, gy0, gy1, gyl, gx0, gx1, gxl, SAME_G, NZ)


@triton.jit
def _grad_x_kernel(gy_ptr, a_ptr, gx_ptr, az_ptr, ay_ptr, ax_ptr,
                   Cx, N, Nc, D, H, W, Hc, Wc, ZIN, YIN, XIN,
                   A_SAME: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """grad_x = (patch gradient where a patch covers the pixel) + grad_y * alpha."""
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_mask = m < N
    alpha = _alpha_at(a_ptr + b * Nc, m, m_mask, H, W, Hc, Wc, az_ptr, ay_ptr, ax_ptr,
                      A_SAME, ACC)
    inside = ((m % W) < XIN) & (((m // W) % H) < YIN) & ((m // (W * H)) < ZIN)
    for c in range(0, Cx):
        off = (b * Cx + c) * N + m
        prev = tl.load(gx_ptr + off, mask=m_mask & inside, other=0.0).to(ACC)
        gyv = tl.load(gy_ptr + off, mask=m_mask, other=0.0).to(ACC)
        tl.store(gx_ptr + off, (prev + alpha * gyv).to(gx_ptr.dtype.element_ty), mask=m_mask)


# ----------------------------------------------------------------------------- launchers
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


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


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Launch:
    """Geometry, tables and block sizes shared by the forward and backward launches."""

    def __init__(self, x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor,
                 subsample: int, focal: float):
        three = x.dim() == 5
        self.B, self.Cx = x.shape[:2]
        self.Cg = g.shape[1]
        self.Ci = theta_weight.shape[0]
        self.S, self.SD = subsample, (subsample if three else 1)
        self.D, self.H, self.W = (x.shape[2:] if three else (1, *x.shape[2:]))
        self.Dg, self.Hg, self.Wg = (g.shape[2:] if three else (1, *g.shape[2:]))
        self.Dc, self.Hc, self.Wc = self.D // self.SD, self.H // self.S, self.W // self.S
        self.N, self.Nc = self.D * self.H * self.W, self.Dc * self.Hc * self.Wc
        self.Ng = self.Dg * self.Hg * self.Wg
        self.K = self.Cx * self.SD * self.S * self.S
        self.acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.tl_acc = _TL_DTYPES[self.acc]
        dev = x.device
        self.g_tabs = [_axis_table(i, o, self.acc, dev) for i, o in
                       ((self.Dg, self.Dc), (self.Hg, self.Hc), (self.Wg, self.Wc))]
        self.a_tabs = [_axis_table(i, o, self.acc, dev) for i, o in
                       ((self.Dc, self.D), (self.Hc, self.H), (self.Wc, self.W))]
        self.same_g = (self.Dg, self.Hg, self.Wg) == (self.Dc, self.Hc, self.Wc)
        self.same_a = (self.Dc, self.Hc, self.Wc) == (self.D, self.H, self.W)
        self.nz = 1 if self.Dg == self.Dc else 2
        self.focal_one = focal == 1.0
        interp = dev.type != "cuda"
        self.ci_pad = max(16, _next_pow2(self.Ci))
        self.block_k = 16 if interp else 32
        self.block_p = 16 if interp else max(16, min(128, 4096 // self.ci_pad))
        self.block = 128 if interp else 1024
        self.focal = focal

    def weights(self, tw, pw, pb, sw, sb):
        acc = self.acc
        scal = torch.cat([sb.reshape(1).to(acc),
                          torch.full((1,), self.focal, dtype=acc, device=sb.device)])
        return (tw.reshape(self.Ci, self.K).to(acc).contiguous(), pw.to(acc).contiguous(),
                pb.to(acc).contiguous(), sw.to(acc).contiguous(), scal)

    def dims(self):
        return (self.Ci, self.K, self.Cx, self.Cg, self.N, self.Nc, self.Ng, self.H, self.W,
                self.Hc, self.Wc, self.Hg, self.Wg)

    def tile_meta(self):
        return dict(S=self.S, SD=self.SD, SAME_G=self.same_g, NZ=self.nz,
                    FOCAL_ONE=self.focal_one, CI_PAD=self.ci_pad, BLOCK_K=self.block_k,
                    BLOCK_P=self.block_p, ACC=self.tl_acc)

    def tile_grid(self):
        return (triton.cdiv(self.Nc, self.block_p), self.B)  # axis 1 is limited to 65535

    def pixel_grid(self):
        return (triton.cdiv(self.N, self.block), self.B)


def attention_gate_forward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, *,
                           subsample: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernels; contiguous inputs of one dtype. Returns (y, alpha)."""
    L = _Launch(x, g, theta_weight, subsample, focal)
    tw, pw, pb, sw, scal = L.weights(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
    a = torch.empty((L.B, L.Nc), dtype=L.acc, device=x.device)
    _coarse_kernel[L.tile_grid()](x, g, tw, pw, pb, sw, scal, a, *L.g_tabs, *L.dims(),
                                  **L.tile_meta())
    y = torch.empty_like(x)
    alpha = x.new_empty((L.B, 1, *x.shape[2:]))
    _scale_kernel[L.pixel_grid()](x, a, y, alpha, *L.a_tabs, L.Cx, L.N, L.Nc, L.H, L.W, L.Hc,
                                  L.Wc, A_SAME=L.same_a, BLOCK=L.block, ACC=L.tl_acc)
    return y, alpha


def attention_gate_backward(grad_y, grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                            psi_weight, psi_bias, *, subsample: int, focal: float):
    """Launch the backward kernels. Returns the gradients of x, g, theta_weight,
    phi_weight, phi_bias, psi_weight and psi_bias (shaped like them; psi_bias as (1,))."""
    L = _Launch(x, g, theta_weight, subsample, focal)
    tw, pw, pb, sw, scal = L.weights(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
    dev, acc = x.device, L.acc
    da = (torch.empty if L.same_a else torch.zeros)((L.B, L.Nc), dtype=acc, device=dev)
    _dalpha_kernel[L.pixel_grid()](grad_y, grad_alpha, x, da, *L.a_tabs, L.Cx, L.N, L.Nc, L.H,
                                   L.W, L.Hc, L.Wc, A_SAME=L.same_a, BLOCK=L.block,
                                   ACC=L.tl_acc)
    a = torch.empty((L.B, L.Nc), dtype=acc, device=dev)
    grad_x = torch.empty_like(x)
    grad_g = torch.empty_like(g) if L.same_g else torch.zeros(g.shape, dtype=acc, device=dev)
    dtw = torch.zeros((L.Ci, L.K), dtype=acc, device=dev)
    dpw = torch.zeros((L.Ci, L.Cg), dtype=acc, device=dev)
    dpb = torch.zeros(L.Ci, dtype=acc, device=dev)
    dsw = torch.zeros(L.Ci, dtype=acc, device=dev)
    dsb = torch.zeros(1, dtype=acc, device=dev)
    _tile_backward_kernel[L.tile_grid()](x, g, tw, pw, pb, sw, scal, da, a, grad_x, grad_g,
                                         dtw, dpw, dpb, dsw, dsb, *L.g_tabs, *L.dims(),
                                         **L.tile_meta())
    _grad_x_kernel[L.pixel_grid()](grad_y, a, grad_x, *L.a_tabs, L.Cx, L.N, L.Nc, L.D, L.H, L.W,
                                   L.Hc, L.Wc, L.Dc * L.SD, L.Hc * L.S, L.Wc * L.S,
                                   A_SAME=L.same_a, BLOCK=L.block, ACC=L.tl_acc)
    dt = x.dtype
    return (grad_x, grad_g.to(dt), dtw.reshape(theta_weight.shape).to(dt), dpw.to(dt),
            dpb.to(dt), dsw.to(dt), dsb.to(dt))
