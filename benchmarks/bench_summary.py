"""The headline table, every row measured side by side in one run (providers interleaved in
blocks of consecutive calls, medians): the fused loss and attention gate against what users
run instead, and training steps of UNet with SAS against plain UNet and MONAI's
AttentionUnet, float32 and bf16.

Rows (op / provider), with ratio rows (metric ``ratio``) that answer each question:
* loss: ``UnifiedFocalLoss()`` fwd+bwd on (8, 2, 256, 256) vs ``F.cross_entropy`` and vs
  the same loss in plain PyTorch (eager autograd);
* gate: ``AttentionGate(64, 128, 32)`` fwd+bwd, x (8, 64, 128^2), g (8, 128, 64^2), vs
  Oktay's block in plain PyTorch modules (same maths, output conv + BN included);
* train: one SGD step with the unified loss, (8, 1, 128^2), width 16 (channels 16..256):
  unimri UNet, UNet + SAS, the UNet + SAS of plain PyTorch modules, MONAI UNet and
  AttentionUnet (skipped if MONAI is missing), each in float32 and bf16 autocast.
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from trainsteps import (PlainUnifiedFocalLoss, Variant, cpu_isa, interleaved_times, machine_load,
                        make_step, problem, record_times, unified_loss)
from unimri.losses import UnifiedFocalLoss
from unimri.models import create_model
from unimri.nn import AttentionGate, OktayAttentionGate


def _median_ms(fns: dict[str, Callable[[], None]], repeat: int, desc: str) -> dict[str, float]:
    """Median ms per provider (blocks of calls in turn, see :func:`interleaved_times`)."""
    times = interleaved_times(fns, repeat, "cpu", warmup=1, desc=desc)
    return {k: statistics.median(v) for k, v in times.items()}


def _loss_rows(rec, quick: bool, note: str) -> None:
    shape = (2, 2, 64, 64) if quick else (8, 2, 256, 256)
    size = "x".join(map(str, shape))
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(shape, generator=g)).requires_grad_()
    target = (torch.rand((shape[0],) + shape[2:], generator=g) < 0.05).long()
    fused = UnifiedFocalLoss()
    plain = PlainUnifiedFocalLoss(fused)

    def step(fn):
        def run():
            logits.grad = None
            fn(logits, target).backward()
        return run

    ms = _median_ms({"unimri UnifiedFocalLoss()": step(fused),
                     "F.cross_entropy": step(F.cross_entropy),
                     "plain PyTorch unified focal loss": step(plain)}, 3 if quick else 9, "summary loss")
    for provider, t in ms.items():
        rec.add("loss fwd+bwd", provider, "forward+backward", "time", "ms", size, t, note=note)
    rec.add("loss fwd+bwd", "UnifiedFocalLoss / cross-entropy", "forward+backward", "ratio", "x", size,
            ms["unimri UnifiedFocalLoss()"] / ms["F.cross_entropy"], note="time ratio (target <= 0.5)")
    rec.add("loss fwd+bwd", "plain PyTorch / UnifiedFocalLoss", "forward+backward", "ratio", "x", size,
            ms["plain PyTorch unified focal loss"] / ms["unimri UnifiedFocalLoss()"],
            note="speed-up over eager (target >= 10)")


def _gate_rows(rec, quick: bool, note: str) -> None:
    (b, cx, cg, ci, s) = (2, 16, 32, 8, 32) if quick else (8, 64, 128, 32, 128)
    size = f"x({b},{cx},{s},{s}) g({b},{cg},{s // 2},{s // 2})"
    torch.manual_seed(0)
    gate = AttentionGate(cx, cg, ci)
    eager = OktayAttentionGate(gate)
    x = torch.randn(b, cx, s, s, requires_grad=True)
    g = torch.randn(b, cg, s // 2, s // 2, requires_grad=True)
    grad = torch.randn(b, cx, s, s)

    def step(module):
        def run():
            x.grad = g.grad = None
            module.zero_grad(set_to_none=True)
            module(x, g)[0].backward(grad)
        return run

    ms = _median_ms({"unimri AttentionGate": step(gate), "Oktay block, plain PyTorch": step(eager)},
                    3 if quick else 10, "summary gate")
    for provider, t in ms.items():
        rec.add("attention gate fwd+bwd", provider, "forward+backward", "time", "ms", size, t, note=note)
    rec.add("attention gate fwd+bwd", "Oktay eager / unimri", "forward+backward", "ratio", "x", size,
            ms["Oktay block, plain PyTorch"] / ms["unimri AttentionGate"], note="speed-up (target >= 3)")


def _monai(features: int):
    try:
        from monai.networks.nets import AttentionUnet, UNet
    except ImportError:  # MONAI is optional: its rows are left out
        return {}
    common = dict(spatial_dims=2, in_channels=1, out_channels=2,
                  channels=tuple(features * 2 ** i for i in range(5)), strides=(2, 2, 2, 2))
    return {"MONAI UNet": UNet(**common), "MONAI AttentionUnet": AttentionUnet(**common)}


def _train_rows(rec, quick: bool, device: str, note_base: str) -> None:
    features, batch, spatial = (8, 2, (64, 64)) if quick else (16, 8, (128, 128))
    size = f"2d b{batch} 1x{spatial[0]}x{spatial[1]} width {features}"
    x, y = problem(spatial, batch, device)
    torch.manual_seed(0)
    models = {"unimri UNet": create_model("unet", spatial_dims=2, features=features),
              "unimri UNet+SAS": create_model("unet", spatial_dims=2, features=features, attention="sas"),
              **_monai(features)}
    steps = {}
    for name, model in models.items():
        for amp in ("none", "bf16"):
            steps[f"{name} {'bf16' if amp == 'bf16' else 'fp32'}"] = make_step(
                model.to(device), unified_loss(), x, y, Variant(name, amp=amp), device)
    steps["UNet+SAS plain PyTorch modules fp32"] = make_step(
        models["unimri UNet+SAS"], unified_loss(), x, y, Variant("eager", eager_modules=True), device)
    load = machine_load()
    times = interleaved_times(steps, 2 if quick else 8, device, warmup=1, desc="summary train steps")
    note = f"{note_base}; {load} (shared machine); unified loss"
    ms = {k: record_times(rec, "train step", k, size, v, batch, note) for k, v in times.items()}

    def ratio(provider: str, a: str, b: str, target: str) -> None:
        if a in ms and b in ms:
            rec.add("train step", provider, "train_step", "ratio", "x", size, ms[a] / ms[b], note=target)

    ratio("UNet+SAS / UNet (fp32)", "unimri UNet+SAS fp32", "unimri UNet fp32", "time ratio (target <= 1.3)")
    ratio("UNet+SAS / UNet (bf16)", "unimri UNet+SAS bf16", "unimri UNet bf16", "time ratio")
    ratio("UNet+SAS / MONAI AttentionUnet (fp32)", "unimri UNet+SAS fp32", "MONAI AttentionUnet fp32",
          "time ratio (target <= 1.0)")
    ratio("UNet+SAS / MONAI AttentionUnet (bf16)", "unimri UNet+SAS bf16", "MONAI AttentionUnet bf16",
          "time ratio (target <= 1.0)")
    ratio("UNet bf16 / fp32", "unimri UNet bf16", "unimri UNet fp32", "time ratio")
    ratio("UNet+SAS bf16 / fp32", "unimri UNet+SAS bf16", "unimri UNet+SAS fp32", "time ratio")
    ratio("plain PyTorch UNet+SAS / unimri (fp32)", "UNet+SAS plain PyTorch modules fp32",
          "unimri UNet+SAS fp32", "speed-up of the fused ops in training")


def run(rec, quick: bool, device: str) -> None:
    if not device.startswith("cpu"):
        raise ValueError(f"bench_summary measures the CPU table; got device={device!r}")
    note = cpu_isa()
    _loss_rows(rec, quick, note)
    _gate_rows(rec, quick, note)
    _train_rows(rec, quick, device, note)
