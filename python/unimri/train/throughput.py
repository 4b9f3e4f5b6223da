"""End-to-end training throughput: the same training steps with fused vs reference ops."""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch


def measure_training_throughput(model: str = "unet", attention: str | None = "sas", loss: str = "unified",
                                size: int = 128, batch_size: int = 8, steps: int = 5, features: int = 16,
                                spatial_dims: int = 2, device: str = "auto", warmup: int = 1,
                                backends: Sequence[str] = ("auto", "reference"), seed: int = 0,
                                amp: str = "auto", channels_last: bool = False,
                                compile: bool = False) -> list[dict[str, Any]]:
    """Median time and images per second of SGD training steps (forward, loss, backward,
    step) per ops backend, the backends' steps interleaved.

    ``backends`` are unimri_kernels dispatch names: "auto" (the fused kernels: C++ on CPU,
    Triton on CUDA), "cpp", "triton", "reference" (pure PyTorch). The data are random
    z-scored images (B, 1, *S) with a sparse random foreground, identical for every backend.
    ``amp``, ``channels_last`` and ``compile`` mean what ``unimri train``'s flags of the same
    names mean; with ``compile`` the warm-up steps include the compilation.
    """
    from unimri_kernels import use_backend

    from unimri.train import registry
    from unimri.train.distributed import resolve_device
    from unimri.train.engine import memory_format_for
    from unimri.train.precision import resolve_amp
    dev = resolve_device(device)
    resolve_amp(amp, dev)  # refuse an unknown mode before building anything
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, 1) + (size,) * spatial_dims
    x = torch.randn(shape, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=memory_format_for(spatial_dims))
    y = (torch.rand((batch_size,) + (size,) * spatial_dims, generator=g) < 0.03).long().to(dev)
    steps_of = {}
    for backend in backends:
        torch.manual_seed(seed)
        net = registry.create_model({"name": model, "kwargs": {
            "spatial_dims": spatial_dims, "in_channels": 1, "num_classes": 2, "features": features,
            "attention": None if attention in (None, "none") else attention}}).to(dev)
        if channels_last:
            net = net.to(memory_format=memory_format_for(spatial_dims))
        criterion = registry.create_loss(loss)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        steps_of[backend] = _make_step(torch.compile(net) if compile else net, criterion, opt, x, y, dev, amp)
    # interleave the backends step by step, so that a change in machine load hits both alike
    times: dict[str, list[float]] = {b: [] for b in backends}
    for i in range(warmup + steps):
        for backend in backends:
            with use_backend(backend):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                steps_of[backend]()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times[backend].append(time.perf_counter() - t0)
    rows = []
    for backend in backends:
        ts = sorted(times[backend])
        median = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        rows.append({"backend": backend, "model": model, "attention": attention, "loss": loss,
                     "size": size, "batch_size": batch_size, "steps": steps, "device": str(dev),
                     "amp": resolve_amp(amp, dev), "channels_last": channels_last, "compile": compile,
                     "seconds": sum(ts), "ms_per_step": 1e3 * median, "ms_min": 1e3 * ts[0],
                     "images_per_s": batch_size / median})
    return rows


def _make_step(net, criterion, opt, x, y, dev, amp):
    from unimri.train.precision import autocast_for, grad_scaler_for

    scaler = grad_scaler_for(dev, amp)

    def step() -> None:
        with autocast_for(dev, amp):
            logits = net(x)
        value = criterion(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            value.backward()
            opt.step()
        else:
            scaler.scale(value).backward()
            scaler.step(opt)
            scaler.update()

    return step
