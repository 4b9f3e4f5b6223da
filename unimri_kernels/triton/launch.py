"""What every Triton launcher decides before a launch: where it runs, which block sizes,
which dot precision, and whether the grid fits CUDA.

The launch configuration of each kernel is one function of the problem shape and dtype
(in :mod:`.unified_focal_loss` and :mod:`.attention_gate`), given a :class:`Target`:

* ``gpu``: choose the block sizes and ``num_warps`` that ship for CUDA. True on CUDA and
  on ``meta`` tensors (how tests check grids of huge shapes), and in the interpreter
  inside :func:`gpu_configs` (how tests check the shipped configuration numerically).
* ``interpreted``: the kernels run under ``TRITON_INTERPRET=1``, which has no TF32 and
  returns garbage for bf16 ``tl.dot``: dots there take IEEE fp32 operands.
* ``allow_tf32``: ``torch.backends.cuda.matmul.allow_tf32`` (fp32 dots use TF32 if set).
* ``num_sms``: the device's SM count (132 where there is none to ask), for grids that
  give every SM several programs.

No kernel uses float atomics, so results do not depend on
``torch.use_deterministic_algorithms``: they are bitwise reproducible either way.
"""
from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import triton.language as tl

#: Largest grid CUDA accepts per axis (x, y, z).
CUDA_MAX_GRID = (2**31 - 1, 65535, 65535)
#: Smallest tile edge a GPU ``tl.dot`` accepts (M, N and K).
MIN_DOT = 16
#: SM count assumed when the device has none to ask (meta tensors, the interpreter).
DEFAULT_NUM_SMS = 132

_force_gpu = False

TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


@dataclass(frozen=True)
class Target:
    """How the next launch will run (see the module docstring)."""

    gpu: bool
    interpreted: bool
    allow_tf32: bool
    num_sms: int = DEFAULT_NUM_SMS


def target_for(device: torch.device) -> Target:
    """The :class:`Target` of a launch on ``device`` under the current torch settings."""
    interpreted = device.type == "cpu"
    if interpreted and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before "
                           "the kernels are imported")
    num_sms = DEFAULT_NUM_SMS
    if device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    return Target(gpu=device.type in ("cuda", "meta") or _force_gpu, interpreted=interpreted,
                  allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32), num_sms=num_sms)


@contextlib.contextmanager
def gpu_configs() -> Iterator[None]:
    """Use the CUDA block sizes and warps even in the interpreter (tests of what ships)."""
    global _force_gpu
    old, _force_gpu = _force_gpu, True
    try:
        yield
    finally:
        _force_gpu = old


def dot_operands(dtype: torch.dtype, target: Target) -> tuple[object, str]:
    """(operand dtype, input_precision) of ``tl.dot`` for inputs of ``dtype``.

    Half inputs feed the tensor cores in half with fp32 accumulation; fp32 follows
    ``allow_tf32``; fp64 stays IEEE fp64. The interpreter gets IEEE fp32 for bf16.
    """
    if dtype == torch.bfloat16 and target.interpreted:
        return tl.float32, "ieee"
    if dtype in (torch.float16, torch.bfloat16):
        return TL_DTYPES[dtype], "ieee"
    if dtype == torch.float32 and target.allow_tf32 and not target.interpreted:
        return tl.float32, "tf32"
    return TL_DTYPES[dtype], "ieee"


def check_grid(grid: Sequence[int], kernel: str) -> tuple[int, ...]:
    """``grid`` as a tuple after checking it against :data:`CUDA_MAX_GRID`."""
    grid = tuple(int(g) for g in grid)
    for axis, (n, hi) in enumerate(zip(grid, CUDA_MAX_GRID)):
        if not 1 <= n <= hi:
            raise ValueError(f"{kernel}: the problem needs {n} programs on grid axis {axis}, "
                             f"outside CUDA's [1, {hi}]; split the input into smaller batches")
    return grid


def needs_int64(*extents: int) -> bool:
    """True when an index built from these element counts can pass 2**31 - 1."""
    return any(int(e) >= 2**31 for e in extents)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def split_f64(x: float) -> tuple[float, float]:
    """(hi, lo), both exact in float32, with hi + lo = x to about 2**-48 relative: how a
    float64 scalar reaches a kernel (Triton passes Python floats as fp32)."""
    hi = _f32(float(x))
    return hi, _f32(float(x) - hi)


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]
