"""End-to-end training throughput: fused unimri ops vs the pure-PyTorch reference ops.

One SGD training step (forward, loss, backward, step) of UNet with the selective
attention gates (SAS) and the unified focal loss — the two fused ops — timed once with the
default dispatch (C++ kernels on CPU, Triton on CUDA) and once with
``UNIMRI_BACKEND=reference``; plus the same model without attention and with
cross-entropy as the plain-PyTorch yardstick. Images/s is recorded beside the time.
"""
from __future__ import annotations

import torch

from unimri.train.throughput import measure_training_throughput


def run(rec, quick: bool, device: str) -> None:
    sizes = [(64, 8)] if quick else [(64, 16), (128, 8), (256, 4)]
    steps = 2 if quick else 7
    for size, batch in sizes:
        label = f"{batch}x1x{size}x{size}"
        for attention, loss, tag in (("sas", "unified", "unet+sas+unified"), (None, "ce", "unet+ce (plain)")):
            backends = ["auto", "reference"] if attention else ["auto"]
            rows = measure_training_throughput(model="unet", attention=attention, loss=loss, size=size,
                                               batch_size=batch, steps=steps, features=16, device=device,
                                               backends=backends, warmup=1)
            for r in rows:
                provider = f"{tag}: {'fused' if r['backend'] == 'auto' else 'reference'} ops"
                rec.add("train_step", provider, "fwd+bwd+sgd", "time", "ms", label, r["ms_per_step"],
                        note=f"{r['images_per_s']:.2f} images/s")
                rec.add("train_step", provider, "fwd+bwd+sgd", "throughput", "images/s", label,
                        r["images_per_s"])
