"""One build's fused 2x max pooling (``unimri.nn.pooling.fused_pool2x``) forward + backward
against ``F.max_pool2d``/``F.max_pool3d`` in the same process, at a UNet encoder's sizes:
(8, 32, 128, 128) 2D and (2, 16, 64, 64, 64) 3D, fp32, default threads; median of 21 calls
after 3 warm-up calls. A second line per shape times the C++ kernels alone
(``torch.ops.unimri.max_pool2x_cpu`` and ``max_pool2x_backward_cpu`` on the same inputs, no
autograd). Run it alternately with two builds on PYTHONPATH to compare them
(``benchmarks/results/restructure_ab/max_pool_direct.md``).

    PYTHONPATH=BUILD/python:BUILD python benchmarks/ab_pool.py LABEL
"""
import sys

import torch
import torch.nn.functional as F

from harness import time_fn
from unimri.nn.pooling import fused_pool2x
from unimri_kernels.dispatch import cpp_ops


def median_ms(step) -> float:
    return time_fn(step, warmup=3, repeat=21)[0]


def train_step(fn, x, gy):
    def step():
        xg = x.detach().requires_grad_(True)
        fn(xg).backward(gy)
    return step


torch.manual_seed(0)
for shape, ref in (((8, 32, 128, 128), F.max_pool2d), ((2, 16, 64, 64, 64), F.max_pool3d)):
    x = torch.randn(shape)
    gy = torch.randn(shape[:2] + tuple(s // 2 for s in shape[2:]))
    fused = median_ms(train_step(fused_pool2x, x, gy))
    aten = median_ms(train_step(lambda t: ref(t, 2), x, gy))
    print(f"{sys.argv[1]} {len(shape) - 2}D fused {fused:.2f} ms, aten {aten:.2f} ms, aten/fused {aten / fused:.2f}")
    ops = cpp_ops()
    forward = median_ms(lambda: ops.max_pool2x_cpu(x))
    backward = median_ms(lambda: ops.max_pool2x_backward_cpu(gy, x))
    print(f"{sys.argv[1]} {len(shape) - 2}D kernels forward {forward:.2f} ms, backward {backward:.2f} ms")
