"""Benchmark of the fused Unified Focal loss (``unimri::unified_focal_loss``).

Providers, side by side in one run: ``unimri`` (fused: C++ on CPU, Triton on CUDA),
``eager_reference`` (the pure-PyTorch ground truth with autograd), ``compile_reference``
(``torch.compile`` of it; only with ``run.py --compile``), ``monai`` (``AsymmetricUnifiedFocalLoss`` fed softmax
probabilities, as its docstring asks) and ``torch_ce`` (``F.cross_entropy``, the floor).
Metrics: median time of forward and forward+backward, peak extra memory of
forward+backward (bytes and as a multiple of the logits' size) and, on a GPU, achieved
bandwidth as a fraction of a device-to-device copy measured in the same run.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Recorder, compile_wanted, copy_bandwidth_gbs, peak_memory_bytes  # noqa: E402

from unimri.losses import UnifiedFocalLoss  # noqa: E402
from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference  # noqa: E402

SIZES = [(8, 2, 256, 256), (16, 4, 256, 256), (2, 2, 128, 128, 128)]
QUICK_SIZES = [(2, 2, 64, 64), (2, 4, 32, 32, 16)]


def _providers(num_classes: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    fused = UnifiedFocalLoss()  # the defaults, label validation included, are what users run
    params = fused.class_params(num_classes).tensor(torch.device("cpu"))

    def reference(x, t):
        p = params.to(x.device)
        return unified_focal_loss_reference(x.reshape(x.shape[0], x.shape[1], -1), t.reshape(t.shape[0], -1), p,
                                            fused.fp_weight, fused.fn_weight, fused.smooth, -100, False).mean()

    out: dict[str, Callable] = {
        "unimri": fused,
        "eager_reference": reference,
        "torch_ce": F.cross_entropy,
    }
    if compile_wanted():
        out["compile_reference"] = torch.compile(reference, dynamic=False)
    try:
        from monai.losses import AsymmetricUnifiedFocalLoss

        monai_loss = AsymmetricUnifiedFocalLoss(to_onehot_y=True, num_classes=num_classes, delta=0.6)
        out["monai"] = lambda x, t: monai_loss(torch.softmax(x, 1), t.unsqueeze(1))
    except ImportError:
        pass
    return out


def run(rec: Recorder, quick: bool, device: str) -> None:
    """Providers are timed round-robin per mode (load on a shared machine hits all alike);
    ``ratio`` rows give each provider's median forward+backward time over unimri's."""
    repeat = 5 if quick else 15
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    for shape in (QUICK_SIZES if quick else SIZES):
        gen = torch.Generator().manual_seed(0)
        logits32 = torch.randn(*shape, generator=gen).to(device)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen).to(device)
        for dtype in dtypes:
            if dtype != torch.float32 and shape != SIZES[0]:
                continue  # bf16 on the first size only: enough to compare with fp32
            size = "x".join(map(str, shape)) + ("" if dtype == torch.float32 else f" {str(dtype)[6:]}")
            _run_case(rec, shape, size, logits32.to(dtype), target, repeat, device)


def _run_case(rec: Recorder, shape, size: str, logits: torch.Tensor, target: torch.Tensor, repeat: int,
              device: str) -> None:
    logit_bytes = logits.numel() * logits.element_size()
    gbs_copy = copy_bandwidth_gbs(logit_bytes, device) if device.startswith("cuda") else None
    providers = _providers(shape[1])
    inputs = {name: logits.clone().requires_grad_() for name in providers}
    forward: dict[str, Callable] = {}
    forward_backward: dict[str, Callable] = {}
    for name, fn in providers.items():
        x = inputs[name]

        def fwd(fn=fn, x=x):
            with torch.no_grad():
                return fn(x, target)

        def fwd_bwd(fn=fn, x=x):
            x.grad = None
            fn(x, target).backward()

        try:
            fwd_bwd()  # compiles torch.compile providers outside the timings
        except Exception as exc:  # a peer that cannot run this case is recorded, not fatal
            rec.add("unified_focal_loss", name, "forward+backward", "error", "-", size, float("nan"),
                    note=f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        forward[name], forward_backward[name] = fwd, fwd_bwd
    rec.time_interleaved("unified_focal_loss", "forward", size, forward, repeat=repeat)
    medians = rec.time_interleaved("unified_focal_loss", "forward+backward", size, forward_backward, repeat=repeat)
    for name, t_fb in medians.items():
        if "unimri" in medians:
            rec.add("unified_focal_loss", name, "forward+backward", "ratio", "x unimri", size,
                    t_fb / medians["unimri"], note="median time / unimri's, same interleaved run")
        inputs[name].grad = None
        peak = peak_memory_bytes(forward_backward[name], device)
        rec.add("unified_focal_loss", name, "forward+backward", "peak_extra_memory", "MiB", size,
                peak / 2**20, note=f"{peak / logit_bytes:.2f}x logits")
        if gbs_copy:
            # minimal traffic: read logits twice (two passes) + targets, write the gradient
            moved = 3 * logit_bytes + target.numel() * target.element_size()
            achieved = moved / (t_fb * 1e-3) / 1e9
            rec.add("unified_focal_loss", name, "forward+backward", "bandwidth_vs_copy", "fraction",
                    size, achieved / gbs_copy, note=f"{achieved:.0f} GB/s vs copy {gbs_copy:.0f} GB/s")
