"""End-to-end training throughput: the same training steps with fused vs reference ops."""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch


def measure_training_throughput(model: str = "unet", attention: str | None = "sas", loss: str = "unified",
                                size: int = 128, batch_size: int = 8, steps: int = 5, features: int = 16,
                                spatial_dims: int = 2, device: str = "auto", warmup: int = 1,
                                backends: Sequence[str] = ("auto", "reference"), seed: int = 0) -> list[dict[str, Any]]:
    """Images per second of SGD training steps (forward, backward, step) per ops backend.

    ``backends`` are unimri_kernels dispatch names: "auto" (the fused kernels: C++ on CPU,
    Triton on CUDA), "cpp", "triton", "reference" (pure PyTorch). The data are random
    z-scored images with a sparse random foreground, identical for every backend.
    """
    from unimri_kernels import use_backend

    from unimri.train import registry
    from unimri.train.distributed import resolve_device
    from unimri.train.predict import autocast_for

    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, 1) + (size,) * spatial_dims
    x = torch.randn(shape, generator=g).to(dev)
    y = (torch.rand((batch_size,) + (size,) * spatial_dims, generator=g) < 0.03).long().to(dev)
    rows = []
    for backend in backends:
        torch.manual_seed(seed)
        net = registry.create_model({"name": model, "kwargs": {
            "spatial_dims": spatial_dims, "in_channels": 1, "num_classes": 2, "features": features,
            "attention": None if attention in (None, "none") else attention}}).to(dev)
        criterion = registry.create_loss(loss)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

        def step() -> None:
            with autocast_for(dev, "auto"):
                logits = net(x)
            value = criterion(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()

        with use_backend(backend):
            for _ in range(warmup):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        rows.append({"backend": backend, "model": model, "attention": attention, "loss": loss,
                     "size": size, "batch_size": batch_size, "steps": steps, "device": str(dev),
                     "seconds": seconds, "ms_per_step": 1e3 * seconds / steps,
                     "images_per_s": steps * batch_size / seconds})
    return rows
