"""End-to-end training throughput: the same training steps with fused vs reference ops."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch


def measure_training_throughput(model: str = "unet", attention: str | None = "sas", loss: str = "unified",
                                size: int = 128, batch_size: int = 8, steps: int = 5, features: int = 16,
                                spatial_dims: int = 2, device: str = "auto", warmup: int = 1,
                                backends: Sequence[str] = ("auto", "reference"), seed: int = 0,
                                amp: str = "auto", channels_last: bool = False,
                                compile: bool = False) -> list[dict[str, Any]]:
    """Median time and images per second of SGD training steps (forward, loss, backward,
    step) per ops backend: blocks of three steps per backend in turn, the first of each block
    untimed (:func:`interleaved_times`), ``steps`` timed steps rounded up to even.

    ``backends`` are unimri_kernels dispatch names: "auto" (the fused kernels: C++ on CPU,
    Triton on CUDA), "cpp", "triton", "reference" (pure PyTorch). The data are random
    z-scored images (B, 1, *S) with a sparse random foreground, identical for every backend.
    ``amp``, ``channels_last`` and ``compile`` mean what ``unimri train``'s flags of the same
    names mean; with ``compile`` the warm-up steps include the compilation.
    """
    from unimri_kernels import use_backend

    from unimri.runtime import registry
    from unimri.train.distributed import resolve_device
    from unimri.train.engine import memory_format_for
    from unimri.runtime.precision import resolve_amp
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

    def in_backend(backend: str, step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with use_backend(backend):
                step()
        return run

    # blocks of steps per backend, in turn: a change in machine load hits every backend alike
    ms = interleaved_times({b: in_backend(b, steps_of[b]) for b in backends}, math.ceil(steps / 2), dev,
                           warmup=warmup, desc="bench", block=3)
    times = {b: [t / 1e3 for t in v] for b, v in ms.items()}
    rows = []
    for backend in backends:
        ts = sorted(times[backend])
        median = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        rows.append({"backend": backend, "model": model, "attention": attention, "loss": loss,
                     "size": size, "batch_size": batch_size, "steps": len(ts), "device": str(dev),
                     "amp": resolve_amp(amp, dev), "channels_last": channels_last, "compile": compile,
                     "seconds": sum(ts), "ms_per_step": 1e3 * median, "ms_min": 1e3 * ts[0],
                     "images_per_s": batch_size / median})
    return rows


def interleaved_times(steps: dict[str, Callable[[], None]], repeat: int, device: str | torch.device,
                      warmup: int = 1, desc: str = "", block: int = 3) -> dict[str, list[float]]:
    """Times (ms) per provider: ``warmup`` untimed rounds (compilation happens there), then
    ``repeat`` rounds in which every provider runs ``block`` calls in a row, in turn; the
    first call of each block is not timed.

    Blocks measure the steady state a training loop sees (the allocator holds the previous
    step's memory, caches hold its data). Timing single calls in turn instead charges each
    provider for the memory the others just used: on these VMs a fresh page costs about six
    times a reused one, and single-call interleaving inflated every step 1.5-2x, unevenly
    across providers.
    """
    from tqdm.auto import tqdm

    cuda = str(device).startswith("cuda")
    times: dict[str, list[float]] = {p: [] for p in steps}
    for i in tqdm(range(warmup + repeat), desc=desc or "steps", leave=False):
        for provider, step in steps.items():
            for call in range(block if i >= warmup else 1):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                step()
                if cuda:
                    torch.cuda.synchronize()
                if i >= warmup and (call > 0 or block == 1):
                    times[provider].append((time.perf_counter() - t0) * 1e3)
    return times


def _make_step(net, criterion, opt, x, y, dev, amp):
    from unimri.runtime.precision import autocast_for, grad_scaler_for

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
