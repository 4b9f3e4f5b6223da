"""Training-step measurement shared by the training benchmarks (bench_train, bench_summary).

A *variant* is how a user runs a model: the fused unimri ops or the same model built from
plain PyTorch modules (Oktay's attention block, a plain PyTorch loss), float32 or bf16
autocast, contiguous or channels-last, eager or ``torch.compile``. Providers are timed in
short blocks of consecutive steps, blocks in turn (interleaved), so that load from other
processes on a shared machine falls on every side of a comparison alike while each block
runs in its own steady state; medians are reported.
"""
from __future__ import annotations

import copy
import os
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from unimri.losses import create_loss
from unimri.nn.plain import with_plain_modules
from unimri.train.precision import autocast_for
from unimri.studies.throughput import interleaved_times  # noqa: F401  (the benchmarks' timing loop)
from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference

MODE = "train_step"


@dataclass(frozen=True)
class Variant:
    """One way to run a training step. ``eager_modules``: attention as plain PyTorch
    modules and the loss as plain PyTorch (what a user writes without unimri)."""

    name: str
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    eager_modules: bool = False


class PlainUnifiedFocalLoss(nn.Module):
    """The unified focal loss as a user would write it in PyTorch (autograd through
    log-softmax, one-hot and reductions): unimri's float64-capable reference formula with
    the parameters of ``UnifiedFocalLoss()``; equals it to rounding."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        self.fused = fused

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, c = logits.shape[:2]
        flat = logits.reshape(b, c, -1)
        params = self.fused.class_params(c).tensor(logits.device)
        tgt = self.fused._softmax_target(logits, target)
        loss = unified_focal_loss_reference(flat, tgt, params, float(self.fused.fp_weight),
                                            float(self.fused.fn_weight), float(self.fused.smooth),
                                            -100, bool(self.fused.batch))
        return loss.mean()


def cpu_isa() -> str:
    """What the CPU offers and ATen uses, e.g. 'ATen AVX512; amx_bf16 avx512_bf16 avx512f avx2'."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    shown = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"ATen {torch.backends.cpu.get_cpu_capability()}; {' '.join(shown) or 'no AVX2'}"


def machine_load() -> str:
    """Load average over the last minute against the cores this process may use."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load unknown"
    return f"load {load:.1f} on {len(os.sched_getaffinity(0))} cores"


def make_step(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
              variant: Variant, device: str) -> Callable[[], None]:
    """One SGD step (zero grad, forward under the variant's autocast, loss on float32
    logits, backward, step) of a private copy of ``model`` run as ``variant``."""
    model = copy.deepcopy(model)
    if variant.eager_modules:
        model = with_plain_modules(model)
        loss_fn = PlainUnifiedFocalLoss(loss_fn)
    if variant.channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    net = torch.compile(model) if variant.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    dev = torch.device(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(dev, variant.amp):
            logits = net(x)
        loss_fn(logits.float(), y).backward()
        optimizer.step()

    return step


def record_times(rec, op: str, provider: str, size: str, times: list[float], batch: int,
                 note: str) -> float:
    """``time`` (median, p20, p80) and ``throughput`` rows; returns the median in ms."""
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    p50 = statistics.median(times)
    rec.add(op, provider, MODE, "time", "ms", size, p50, q[1], q[7], note=note)
    rec.add(op, provider, MODE, "throughput", "img/s", size, batch / (p50 * 1e-3), note=note)
    return p50


def problem(spatial: tuple[int, ...], batch: int, device: str, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random z-scored images (B, 1, *S) with a sparse random foreground label map (B, *S)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 1) + spatial, generator=g).to(device)
    y = (torch.rand((batch,) + spatial, generator=g) < 0.03).long().to(device)
    return x, y


def unified_loss() -> nn.Module:
    return create_loss("unified")
