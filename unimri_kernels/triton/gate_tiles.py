"""Building blocks of the attention-gate kernels (:mod:`.gate_kernels`): tile indexing,
patch and resampling offsets, the pre-activation tile product and the attention head.
Everything is masked so the kernels also run under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import triton
import triton.language as tl


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
