"""One build's fused 2x max pooling (``unimri.nn.pooling.fused_pool2x``) forward + backward
against ``F.max_pool2d``/``F.max_pool3d`` in the same process, at a UNet encoder's sizes:
(8, 32, 128, 128) 2D and (2, 16, 64, 64, 64) 3D, fp32, default threads; median of 21 calls
after 3 warm-up calls. Run it alternately with two builds on PYTHONPATH to compare them
(``benchmarks/results/restructure_ab/max_pool_direct.md``).

    PYTHONPATH=BUILD/python:BUILD python benchmarks/ab_pool.py LABEL
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from unimri.nn.pooling import fused_pool2x


def median_ms(fn, x, gy) -> float:
    def step():
        xg = x.detach().requires_grad_(True)
        fn(xg).backward(gy)
    for _ in range(3):
        step()
    times = []
    for _ in range(21):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


torch.manual_seed(0)
for shape, ref in (((8, 32, 128, 128), F.max_pool2d), ((2, 16, 64, 64, 64), F.max_pool3d)):
    x = torch.randn(shape)
    gy = torch.randn(shape[:2] + tuple(s // 2 for s in shape[2:]))
    fused, aten = median_ms(fused_pool2x, x, gy), median_ms(lambda t: ref(t, 2), x, gy)
    print(f"{sys.argv[1]} {len(shape) - 2}D fused {fused:.2f} ms, aten {aten:.2f} ms, aten/fused {aten / fused:.2f}")
