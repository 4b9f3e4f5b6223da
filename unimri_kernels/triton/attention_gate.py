"""Launchers of the fused attention gate (SAS): :func:`attention_gate_forward` and
:func:`attention_gate_backward`, what ``unimri::attention_gate`` runs on CUDA tensors.

Maths: :mod:`unimri_kernels.reference.attention_gate`. 2D inputs run as 3D with depth 1.
Kernels (:mod:`.gate_kernels`; configurations in :mod:`.gate_config`; design, grids and
byte model in docs/gpu_kernels.md), all on grid axis 0 (up to 2³¹ − 1 programs):

* ``_coarse_kernel``: pre = W_theta @ patches(x) + W_phi @ resample(g) accumulated in
  registers over K and Cg blocks (``tl.dot``), then relu, psi, sigmoid, ``** focal``;
  writes only the coarse attention a (B, Nc). The (B, Ci, Nc) tensor is never written.
* ``_scale_kernel``: alpha = resample(a) on x's grid; y = alpha * x, on [channel block,
  pixel block] tiles.
* backward: ``_dalpha_kernel`` (d alpha = grad_alpha + sum_c grad_y * x on x's grid),
  ``_adjoint_kernel`` (transposed resampling as an ordered gather: d alpha to the coarse
  grid, d g to g's grid), ``_tile_backward_kernel`` (recomputes pre, then weight / patch /
  g gradients) and ``_grad_x_kernel`` (adds grad_y * alpha).

Precision: arithmetic in fp32 (fp64 for fp64 inputs). ``tl.dot`` takes half operands for
half inputs (tensor cores, fp32 accumulation), fp32 ones as TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set and IEEE otherwise (see
:func:`unimri_kernels.triton.launch.dot_operands`). Offsets inside an item are int32
unless Cx·N, Cg·Ng or N can pass 2³¹ (``IDX64``); item offsets are int64.

No float atomics anywhere: the tile backward runs a fixed number of programs, each adding
its tiles in order into its own slot of weight-gradient partials (summed in a second
pass), and the scatters of the resampling adjoints are gathers through inverted tables,
so results are bitwise identical run to run, with or without
``torch.use_deterministic_algorithms``.
"""
from __future__ import annotations

import torch
import triton.language as tl

from unimri_kernels.triton.gate_config import (GateShape, GradXConfig, PixelConfig,  # noqa: F401
                                               TileConfig,
                                               _axis_table, _inverse_table, adjoint_config,
                                               coarse_config, dalpha_config, grad_x_config,
                                               scale_config, tile_backward_config)
from unimri_kernels.triton.gate_kernels import (_adjoint_kernel, _coarse_kernel, _dalpha_kernel,
                                                _grad_x_kernel, _scale_kernel,
                                                _tile_backward_kernel)
from unimri_kernels.triton.launch import TL_DTYPES, target_for

TORCH_DTYPES = {v: k for k, v in TL_DTYPES.items()}


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
        wdt = TORCH_DTYPES[dot_dtype]
        scal = torch.cat([sb.reshape(1).to(acc),
                          torch.full((1,), self.focal, dtype=acc, device=sb.device)])
        return (tw.reshape(gs.Ci, gs.K).to(wdt).contiguous(), pw.to(wdt).contiguous(),
                pb.to(acc).contiguous(), sw.to(acc).contiguous(), scal)

    def covered(self) -> tuple[int, int, int]:
        """The (depth, height, width) box of x's grid that the patches cover."""
        dc, hc, wc = self.gs.coarse
        return dc * self.gs.SD, hc * self.gs.S, wc * self.gs.S

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
                             *L.covered(), pcfg.tiles, pcfg.cblocks, A_SAME=L.same_a,
                             OUTSIDE_ONLY=False, **L.pixel_meta(pcfg))
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
    dpre = torch.empty((gs.B, gs.Ci, gs.Nc), dtype=TORCH_DTYPES[cfg.dot], device=dev)
    grad_g = (torch.empty_like(g) if L.same_g
              else torch.empty((gs.B, gs.Cg, gs.Nc), dtype=acc, device=dev))
    dtw = torch.empty((cfg.nprog, gs.Ci, gs.K), dtype=acc, device=dev)
    dpw = torch.empty((cfg.nprog, gs.Ci, gs.Cg), dtype=acc, device=dev)
    dpb = torch.empty((cfg.nprog, gs.Ci), dtype=acc, device=dev)
    dsw = torch.empty((cfg.nprog, gs.Ci), dtype=acc, device=dev)
    dq = torch.empty((gs.B, gs.Nc), dtype=acc, device=dev)
    _tile_backward_kernel[cfg.grid](x, g, tw, pw, pb, sw, scal, da, a, dpre, grad_g,
                                    dtw, dpw, dpb, dsw, dq, *L.g_tabs, *L.dims(), cfg.tiles,
                                    gs.B * cfg.tiles, cfg.nprog, **L.tile_meta(cfg))
    if not L.same_g:
        grad_g = L.adjoint(grad_g, gs.B * gs.Cg, L.g_axes, x.dtype).reshape(g.shape)
    # grad_x, written once: the patch gradient plus grad_y * alpha, then the pixels no patch
    # covers (only when x's size is not a multiple of the stride)
    xcfg = grad_x_config(gs, x.dtype, L.target)
    _grad_x_kernel[xcfg.grid](grad_y, a, dpre, tw, grad_x, *L.a_tabs, gs.Ci, gs.K, gs.Cx, gs.N,
                              gs.Nc, gs.H, gs.W, hc, wc, xcfg.tiles, xcfg.cblocks, S=gs.S,
                              SD=gs.SD, A_SAME=L.same_a, CI_PAD=xcfg.ci_pad,
                              CI_BLOCK=xcfg.ci_block, BLOCK_CX=xcfg.block_cx, BLOCK_P=xcfg.block_p, ACC=L.tl_acc,
                              DOT=cfg.dot, PREC=cfg.precision, IDX64=L.idx64,
                              num_warps=xcfg.num_warps)
    if L.covered() != (gs.D, gs.H, gs.W):
        ecfg = scale_config(gs, x.dtype, L.target)
        _scale_kernel[ecfg.grid](grad_y, a, grad_x, grad_x, *L.a_tabs, gs.Cx, gs.N, gs.Nc, gs.H,
                                 gs.W, hc, wc, *L.covered(), ecfg.tiles, ecfg.cblocks,
                                 A_SAME=L.same_a, OUTSIDE_ONLY=True, **L.pixel_meta(ecfg))
    dt = x.dtype
    return (grad_x, grad_g.to(dt), dtw.sum(0).reshape(theta_weight.shape).to(dt),
            dpw.sum(0).to(dt), dpb.sum(0).to(dt), dsw.sum(0).to(dt), dq.sum().reshape(1).to(dt))

