"""Benchmark of the fused attention gate (SAS) against the eager reference,
``torch.compile(reference)`` (only with ``run.py --compile``) and MONAI's ``AttentionBlock``.

    python benchmarks/run.py --ops attention [--quick]

Rows: median time of forward and forward+backward, peak memory of forward+backward and
bytes saved for backward, per provider and size. MONAI's AttentionBlock gates at full
resolution (its g must be on x's grid, so it gets g upsampled once, outside the timing) and
includes BatchNorm layers: it is what users pick today, not the same maths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from harness import Recorder, compile_wanted, copy_bandwidth_gbs, peak_memory_bytes, saved_tensor_bytes

from unimri_kernels.dispatch import backend_for
from unimri_kernels.ops.attention_gate import attention_gate
from unimri_kernels.reference.attention_gate import attention_gate_reference

OP = "attention_gate"
MB = 1024.0 ** 2


def _sizes(quick: bool) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    if quick:
        return [((2, 16, 32, 32), (2, 32, 16, 16)), ((1, 8, 16, 16, 16), (1, 16, 8, 8, 8))]
    return [((8, 64, 128, 128), (8, 128, 64, 64)), ((2, 32, 64, 64, 64), (2, 64, 32, 32, 32))]


def _problem(x_shape, g_shape, device):
    gen = torch.Generator().manual_seed(0)
    d = len(x_shape) - 2
    cx, cg = x_shape[1], g_shape[1]
    ci = cx // 2

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_(True)

    x, g = rnd(*x_shape), rnd(*g_shape)
    weights = [rnd(ci, cx, *(2,) * d, scale=0.1), rnd(ci, cg, scale=0.1), rnd(ci, scale=0.1),
               rnd(ci, scale=0.1), rnd(1, scale=0.1)]
    return x, g, weights


def _monai_block(d: int, cx: int, cg: int, device: str):
    try:
        from monai.networks.blocks.attention_utils import AttentionBlock  # type: ignore
    except ImportError:
        try:
            from monai.networks.nets.attentionunet import AttentionBlock  # type: ignore
        except ImportError:
            return None
    return AttentionBlock(spatial_dims=d, f_int=cx // 2, f_g=cg, f_l=cx).to(device)


def _providers(x, g, weights, device):
    """name -> (forward callable returning the gated x, parameters that get gradients)."""
    d = x.dim() - 2

    def fused():
        return attention_gate(x, g, *weights, subsample=2, focal=1.0)[0]

    def eager():
        return attention_gate_reference(x, g, *weights, subsample=2, focal=1.0)[0]

    providers = {f"unimri fused ({backend_for(x)})": (fused, [x, g, *weights]),
                 "eager reference": (eager, [x, g, *weights])}
    if compile_wanted():
        compiled_ref = torch.compile(attention_gate_reference)

        def compiled():
            return compiled_ref(x, g, *weights, subsample=2, focal=1.0)[0]

        providers["torch.compile(reference)"] = (compiled, [x, g, *weights])
    block = _monai_block(d, x.shape[1], g.shape[1], device)
    if block is not None:
        mode = "bilinear" if d == 2 else "trilinear"
        g_full = F.interpolate(g.detach(), size=x.shape[2:], mode=mode,
                               align_corners=False).requires_grad_(True)
        providers["MONAI AttentionBlock (full-res gating)"] = (
            lambda: block(g=g_full, x=x), [x, g_full, *block.parameters()])
    return providers


def _forward_backward(forward, params, grad_out):
    def step():
        for p in params:
            p.grad = None
        out = forward()
        out.backward(grad_out)
    return step


def run(rec: Recorder, quick: bool, device: str) -> None:
    """Providers are timed round-robin per mode (load on a shared machine hits all alike);
    ``ratio`` rows give each provider's median forward+backward time over the fused op's."""
    repeat = 3 if quick else 9
    for x_shape, g_shape in _sizes(quick):
        size = f"x{tuple(x_shape)} g{tuple(g_shape)}".replace(" ", "")
        x, g, weights = _problem(x_shape, g_shape, device)
        input_bytes = sum(t.numel() * t.element_size() for t in (x, g, *weights))
        rec.add(OP, "inputs (x, g, weights)", "forward", "memory", "MB", size, input_bytes / MB,
                note="target: saved for backward <= this")
        grad_out = torch.randn(x_shape, device=device)
        providers = _providers(x, g, weights, device)
        steps, forwards, notes = {}, {}, {}
        for name, (forward, params) in providers.items():
            notes[name] = "gates at full resolution, with BatchNorm" if name.startswith("MONAI") else ""
            steps[name] = _forward_backward(forward, params, grad_out)
            steps[name]()  # compile / warm up outside the timings

            def forward_no_grad(forward=forward):
                with torch.no_grad():
                    return forward()

            forwards[name] = forward_no_grad
        fwd = rec.time_interleaved(OP, "forward", size, forwards, repeat=repeat, notes=notes)
        fwd_bwd = rec.time_interleaved(OP, "forward+backward", size, steps, repeat=repeat, notes=notes)
        fused = next(name for name in providers if name.startswith("unimri"))
        for name, (forward, params) in providers.items():
            rec.add(OP, name, "forward+backward", "ratio", "x fused", size, fwd_bwd[name] / fwd_bwd[fused],
                    note="median time / the fused op's, same interleaved run")
            rec.add(OP, name, "forward+backward", "peak_memory", "MB", size,
                    peak_memory_bytes(steps[name], device) / MB, note=notes[name])
            rec.add(OP, name, "forward", "saved_for_backward", "MB", size,
                    saved_tensor_bytes(forward) / MB, note=notes[name])
            if device.startswith("cuda") and name.startswith("unimri"):
                moved = (2 * x.numel() + g.numel() + x.numel() // x.shape[1]) * x.element_size()
                achieved = moved / (fwd[name] * 1e-3) / 1e9
                copy = copy_bandwidth_gbs(x.numel() * x.element_size(), device)
                rec.add(OP, name, "forward", "bandwidth_fraction_of_copy", "ratio", size,
                        achieved / copy, note=f"{achieved:.0f} GB/s vs copy {copy:.0f} GB/s")
            for p in params:
                p.grad = None
