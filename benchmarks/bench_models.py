"""Backbone training-step benchmark: images/s (forward + backward + SGD step with the unified
loss) and peak memory for every unimri backbone with and without SAS, on the fused ops
(C++ on CPU, Triton on CUDA) against the same network as a user would build it from plain
PyTorch modules (Oktay's attention block, the loss in plain PyTorch: ``eager``), with
MONAI's UNet and AttentionUnet of the same widths as the external anchor.

Sizes: 2D batch 8 of 1 x 256 x 256, 3D batch 2 of 1 x 64^3 (``quick``: 2D batch 2 of
1 x 64 x 64, 3D batch 1 of 1 x 32^3). Width ``features=16`` (quick 8); MONAI anchors use
channels (f, 2f, 4f, 8f, 16f) with strides 2. Parameter counts are recorded as rows too.
"""
from __future__ import annotations

import os

from typing import Callable

import torch
from tqdm import tqdm

from harness import Recorder, peak_memory_bytes, saved_tensor_bytes
from trainsteps import PlainUnifiedFocalLoss, interleaved_times, record_times
from unimri.losses import create_loss
from unimri.models import MODEL_NAMES, create_model
from unimri.nn.plain import with_plain_modules
from unimri_kernels.dispatch import backend_for

MODE = "train_step"


def _train_step(model: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
    """(one SGD training step, the forward pass with the loss alone)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def forward() -> torch.Tensor:
        return loss_fn(model(x), y)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward().backward()
        optimizer.step()

    return step, forward


def _memory(rec: Recorder, op: str, provider: str, size: str,
            fns: tuple[Callable[[], None], Callable[[], torch.Tensor]], device: str, note: str) -> None:
    """Peak memory of one step (which also warms up) and the bytes autograd saves in the forward.

    On CPU the peak is the resident-set high-water mark above the level before the step,
    which reads low once the allocator holds freed memory from earlier steps; the saved
    bytes (``saved_activations``, forward only) are exact."""
    step, forward = fns
    peak = peak_memory_bytes(step, device)
    rec.add(op, provider, MODE, "peak_memory", "MiB", size, peak / 2**20, note=note)
    rec.add(op, provider, MODE, "saved_activations", "MiB", size, saved_tensor_bytes(forward) / 2**20, note=note)


def _monai_anchors(spatial_dims: int, features: int) -> dict[str, torch.nn.Module]:
    try:
        from monai.networks.nets import AttentionUnet, UNet
    except ImportError:  # MONAI is optional
        return {}
    channels = tuple(features * 2 ** i for i in range(5))
    common = dict(spatial_dims=spatial_dims, in_channels=1, out_channels=2, channels=channels, strides=(2, 2, 2, 2))
    return {"monai_unet": UNet(**common), "monai_attention_unet": AttentionUnet(**common)}


def run(rec: Recorder, quick: bool, device: str) -> None:
    features = 8 if quick else 16
    cases = [(2, 2, (64, 64)), (3, 1, (32, 32, 32))] if quick else [(2, 8, (256, 256)), (3, 2, (64, 64, 64))]
    # UNIMRI_BENCH_DIMS=2 or 3 runs one half (e.g. in its own process: `run.py --ops models --tag 3d`)
    dims_filter = os.environ.get("UNIMRI_BENCH_DIMS")
    if dims_filter:
        cases = [c for c in cases if str(c[0]) == dims_filter.strip()]
    repeat = 3
    loss_fn = create_loss("unified")
    plan = [(dims, batch, shape, name, att) for dims, batch, shape in cases
            for name in MODEL_NAMES for att in (None, "sas")]
    for dims, batch, shape, name, att in tqdm(plan, desc="bench_models"):
        size = f"{dims}d b{batch} 1x" + "x".join(map(str, shape))
        op = name + ("+sas" if att else "")
        torch.manual_seed(0)
        x = torch.randn((batch, 1) + shape, device=device)
        y = torch.randint(0, 2, (batch,) + shape, device=device)
        model = create_model(name, spatial_dims=dims, features=features, attention=att).to(device)
        rec.add(op, "unimri", MODE, "params", "count", size, sum(p.numel() for p in model.parameters()),
                note=f"features={features}")
        steps, notes = {}, {}
        eager_model = with_plain_modules(model)
        for provider, net, loss in (("fused", model, loss_fn),
                                    ("eager", eager_model, PlainUnifiedFocalLoss(loss_fn))):
            notes[provider] = f"ops={backend_for(x)}" if provider == "fused" else "plain PyTorch modules"
            fns = _train_step(net, loss, x, y)
            _memory(rec, op, provider, size, fns, device, notes[provider])
            steps[provider] = fns[0]
        times = interleaved_times(steps, repeat, device, warmup=0, desc=op)
        ms = {p: record_times(rec, op, p, size, times[p], batch, notes[p]) for p in steps}
        rec.add(op, "fused/eager", MODE, "speedup", "x", size, ms["eager"] / ms["fused"],
                note="throughput ratio")
        del model, eager_model
    for dims, batch, shape in cases:
        size = f"{dims}d b{batch} 1x" + "x".join(map(str, shape))
        torch.manual_seed(0)
        x = torch.randn((batch, 1) + shape, device=device)
        y = torch.randint(0, 2, (batch,) + shape, device=device)
        for op, model in _monai_anchors(dims, features).items():
            model = model.to(device)
            rec.add(op, "monai", MODE, "params", "count", size, sum(p.numel() for p in model.parameters()),
                    note=f"channels from {features}")
            note = f"unified loss ops={backend_for(x)}"
            fns = _train_step(model, loss_fn, x, y)
            _memory(rec, op, "monai", size, fns, device, note)
            times = interleaved_times({"monai": fns[0]}, repeat, device, warmup=0, desc=op)
            record_times(rec, op, "monai", size, times["monai"], batch, note)
