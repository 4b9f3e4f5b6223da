"""Mixed precision for training, validation and inference: one policy on CPU and CUDA.

``amp`` is one of :data:`AMP_MODES`:

* ``"auto"``: bf16 autocast on CUDA, none on CPU (CPU bf16 pays off only with AVX-512-BF16/AMX,
  so it is opt-in there);
* ``"bf16"`` / ``"fp16"``: autocast to that dtype on any device (fp16 adds a gradient scaler);
* ``"none"``: float32 throughout.

Under autocast, convolutions and the fused attention gate run in the low-precision dtype
(the gate casts its fp32 parameters, see ``unimri_kernels.ops.attention_gate.autocast_inputs``);
losses take the logits in float32 and accumulate in fp32.
"""
from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("auto", "none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """The effective mode on ``device``: ``"none"``, ``"bf16"`` or ``"fp16"``."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp: expected one of {AMP_MODES}, got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "none"
    return amp


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``amp`` on ``device`` (a no-op for ``"none"``)."""
    mode = resolve_amp(amp, device)
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[mode])


def grad_scaler_for(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 training (bf16 and fp32 need none)."""
    if resolve_amp(amp, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
