"""Geometry, resampling tables and launch configurations of the attention-gate kernels:
one function of the problem shape, dtype and :class:`~.launch.Target` per kernel. On GPUs
every launch aims at :func:`min_programs` programs (4 per SM) so that one slow program
never leaves an SM idle; docs/gpu_kernels.md gives the numbers at the benchmark shape.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from unimri_kernels.triton.launch import (MIN_DOT, Target, check_grid, dot_operands, needs_int64,
                                          next_pow2)


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
    (CI_PAD, BLOCK_P) tile of <= 2048 (fp64: 1024; backward: half) elements, halved while
    the launch would have fewer than :func:`min_programs` tiles. 2048 keeps 4 warps under
    the 255 registers that let two programs share an SM; the fp64 bound keeps the
    pipelined (BLOCK_K, BLOCK_P) operand tiles within an A100's shared memory."""
    ci_pad = max(MIN_DOT, next_pow2(gs.Ci))
    if not target.gpu:
        return ci_pad, MIN_DOT, MIN_DOT, 4
    budget = 2048 if dtype != torch.float64 else 1024
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
    """Configuration of ``_scale_kernel`` (item x pixel tile x channel block programs);
    also the backward's grad_x on pixels outside every patch."""
    return _pixel_config(gs.B, gs.N, gs.Cx, target, "attention_gate (scale)", True)


def dalpha_config(gs: GateShape, dtype: torch.dtype, target: Target) -> PixelConfig:
    """Configuration of ``_dalpha_kernel`` (item x pixel tile programs; channels looped)."""
    return _pixel_config(gs.B, gs.N, gs.Cx, target, "attention_gate (d alpha)", False)


@dataclass(frozen=True)
class GradXConfig:
    """``_grad_x_kernel``: programs of (item, BLOCK_P coarse pixels, BLOCK_CX channels)."""

    ci_pad: int
    ci_block: int
    block_cx: int
    block_p: int
    num_warps: int
    tiles: int
    cblocks: int
    grid: tuple[int, ...]


def grad_x_config(gs: GateShape, dtype: torch.dtype, target: Target) -> GradXConfig:
    """Configuration of ``_grad_x_kernel``: dot edges >= 16, (CI_BLOCK, BLOCK_P) d pre
    chunks of <= 2048 elements (fp64: 1024), BLOCK_P halved while the launch has fewer than
    :func:`min_programs` programs."""
    ci_pad = max(MIN_DOT, next_pow2(gs.Ci))
    ci_block = min(ci_pad, 64)
    block_cx = MIN_DOT
    cblocks = triton.cdiv(gs.Cx, block_cx)
    if target.gpu:
        budget = 2048 if dtype != torch.float64 else 1024
        block_p = max(MIN_DOT, min(128, budget // ci_block, next_pow2(gs.Nc)))
        while block_p > MIN_DOT and gs.B * triton.cdiv(gs.Nc, block_p) * cblocks < min_programs(target):
            block_p //= 2
    else:
        block_p = MIN_DOT
    tiles = triton.cdiv(gs.Nc, block_p)
    return GradXConfig(ci_pad, ci_block, block_cx, block_p, 4, tiles, cblocks,
                       check_grid((gs.B * tiles * cblocks,), "attention_gate (grad x)"))


def adjoint_config(rows: int, n_in: int, dtype: torch.dtype, target: Target) -> PixelConfig:
    """Configuration of ``_adjoint_kernel`` over (rows, n_in) outputs."""
    return _pixel_config(rows, n_in, 1, target, "attention_gate (adjoint resample)", True)
