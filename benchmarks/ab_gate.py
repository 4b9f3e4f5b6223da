"""One build's ``AttentionGate(64, 128, 32)`` forward + backward at the headline shape, x (8, 64,
128²), g (8, 128, 64²), random cotangents: median and min wall time of 15 calls after 3
warm-up calls, default threads. Run it alternately with two builds on PYTHONPATH to compare
them on the gate alone (``benchmarks/results/restructure_ab/gate_direct.md``).

    PYTHONPATH=BUILD/python:BUILD python benchmarks/ab_gate.py LABEL
"""
import time, torch, sys
torch.manual_seed(0)
from unimri.nn import AttentionGate
m = AttentionGate(64, 128, 32)
x = torch.randn(8, 64, 128, 128, requires_grad=True); g = torch.randn(8, 128, 64, 64, requires_grad=True)
def step():
    y, a = m(x, g); torch.autograd.backward((y, a), (gy, ga))
gy = torch.randn(8, 64, 128, 128); ga = torch.randn(8, 1, 128, 128)
for _ in range(3): step()
ts = []
for _ in range(15):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
ts.sort(); print(sys.argv[1], "median ms", round(ts[7]*1e3, 2), "min", round(ts[0]*1e3, 2))
