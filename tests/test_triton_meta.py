"""The CUDA routes of the Triton ops run end to end on ``meta`` tensors (nothing is
allocated; any host read of device data raises there), with every launch recorded:

* the loss's forward+backward makes at most 4 launches (stats, finish, gradient);
* at the benchmark shapes every launch of the loss's pixel sweeps and of the attention
  gate has at least 4 programs per SM of an H100 (132 SMs) — the finish kernel, one
  program per loss row over a few KiB of partials, is the one exception by design;
* a byte model of each route (:mod:`unimri_kernels.triton.traffic`) meets its target.

What these tests cannot show (achieved bandwidth, time) is left to scripts/gpu_check.sh.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from unimri_kernels.compile_check import (GateProblem, launches_of,  # noqa: E402
                                          loss_route_launches)
from unimri_kernels.triton.launch import CUDA_MAX_GRID, DEFAULT_NUM_SMS  # noqa: E402
from unimri_kernels.triton.traffic import launch_traffic, route_bytes  # noqa: E402

MIN_PROGRAMS = 4 * DEFAULT_NUM_SMS
#: The attention benchmark shape: x (8, 64, 128²), g (8, 128, 64²), 32 inter channels.
GATE_BENCH = dict(batch=8, cx=64, cg=128, ci=32, size=(128, 128), g_size=(64, 64), subsample=2)


@pytest.fixture
def no_host_sync(monkeypatch):
    """Fail on any explicit synchronisation as well (meta tensors fail on data reads)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in a CUDA route")

    monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Event, "synchronize", forbidden, raising=False)


def _loss_launches(batch, classes, spatial, dtype, target_dtype, pooled=False):
    """Forward + backward of the eager Triton loss route on meta tensors."""
    rec, n_forward, logits, target, loss = loss_route_launches(batch, classes, spatial, dtype, target_dtype, pooled)
    assert loss.shape == ((1,) if pooled else (batch,))
    assert logits.grad.shape == logits.shape and logits.grad.dtype == dtype
    return rec, n_forward, logits, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8, torch.float32])
@pytest.mark.parametrize("pooled", [False, True])
def test_loss_forward_backward_is_three_launches_without_host_sync(no_host_sync, dtype,
                                                                   target_dtype, pooled):
    rec, n_forward, _, _ = _loss_launches(8, 2, (512, 512), dtype, target_dtype, pooled)
    assert [ln.name for ln in rec] == ["_ufl_stats_kernel", "_ufl_finish_kernel",
                                       "_ufl_grad_kernel"]
    assert n_forward == 2  # the gradient sweep runs in backward, grad_output folded in
    stats, finish, grad = rec
    assert finish.grid == ((1,) if pooled else (8,))
    assert grad.kwargs["HAS_GO"] is True
    for ln in (stats, grad):
        assert ln.grid[0] >= MIN_PROGRAMS, (ln.name, ln.grid)
    for ln in rec:
        assert all(1 <= g <= hi for g, hi in zip(ln.grid, CUDA_MAX_GRID)) and len(ln.grid) == 1
        assert ln.kwargs["num_warps"] in (1, 2, 4, 8)


@pytest.mark.parametrize("spatial", [(512, 512), (96, 96, 96)])
@pytest.mark.parametrize("classes,dtype", [(2, torch.float32), (2, torch.bfloat16),
                                           (5, torch.float32), (16, torch.float16)])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8])
def test_loss_byte_model_meets_its_target(spatial, classes, dtype, target_dtype):
    """Target: ≤ 1.5 × (one read + one write of the logits) for the logits and gradient,
    and labels read about once: wide labels are read once and re-read as a uint8 copy
    (1 + 2/8 of int64 labels), byte labels twice (their own 2 bytes a pixel)."""
    rec, _, logits, target = _loss_launches(2, classes, spatial, dtype, target_dtype)
    z_bytes = logits.numel() * logits.element_size()
    t_bytes = target.numel() * target.element_size()
    per = [launch_traffic(ln) for ln in rec]
    logits_moved = (per[0].read["z_ptr"] + per[2].read["z_ptr"] + per[2].written["grad_ptr"])
    assert logits_moved == 3 * z_bytes  # = 1.5 × (one read + one write)
    labels_moved = per[0].read["t_ptr"] + per[0].written.get("lab_ptr", 0) + per[2].read["t_ptr"]
    n = target.numel()
    expected_labels = (t_bytes + 2 * n) if target.element_size() > 1 else 2 * t_bytes
    assert labels_moved == expected_labels
    small = route_bytes(rec) - logits_moved - labels_moved  # partials, coefficients, params
    # 3C + 3 fp32 partials per BLOCK_N pixels, written and read: 10 % of fp16 logits at
    # 16 classes (BLOCK_N = 128), under 2 % for 2 classes
    assert small < 0.11 * z_bytes, small


def _gate_launches(dtype="float32", **kw):
    prob = GateProblem(**{**GATE_BENCH, **kw}, dtype=dtype)
    return prob, launches_of(prob)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_every_gate_launch_fills_an_h100_at_the_benchmark_shape(no_host_sync, dtype, deterministic):
    prob = GateProblem(**GATE_BENCH, dtype=dtype)
    rec = launches_of(prob, deterministic=deterministic)
    names = [ln.name for ln in rec]
    assert names == ["_coarse_kernel", "_scale_kernel", "_dalpha_kernel", "_adjoint_kernel",
                     "_tile_backward_kernel", "_grad_x_kernel"]
    low = [(ln.name, ln.grid) for ln in rec if ln.grid[0] < MIN_PROGRAMS]
    assert not low, low
    by_name = {ln.name: ln for ln in rec}
    # contiguous pixel axis of at least 128 pixels: vector loads of x and grad_y
    for name in ("_scale_kernel", "_dalpha_kernel"):
        assert by_name[name].kwargs["BLOCK"] >= 128, name


@pytest.mark.parametrize("three", [False, True])
def test_gate_byte_model(three):
    """Forward 3|x| + |g| (x read by the coarse and the scale pass, y written, g read).
    Backward 5|x| + 2|g| + the weight-gradient slots + 2|d pre|: grad_y and x for d alpha;
    x and g for the tile pass, which writes d pre (B, Ci, Nc), d g and one slot of weight
    partials per program; grad_y and d pre read and grad_x written once by the grad_x pass.
    The coarse maps (a, d alpha, dq) are under 2 % more."""
    kw = dict(size=(32, 64, 64), g_size=(16, 32, 32)) if three else {}
    prob, rec = _gate_launches(**kw)
    x_bytes = prob.batch * prob.cx * 4
    g_bytes = prob.batch * prob.cg * 4
    for s, sg in zip(prob.size, prob.g_size):
        x_bytes *= s
        g_bytes *= sg
    tile = launch_traffic(rec[4])
    assert tile.kernel == "_tile_backward_kernel"
    slots = sum(tile.written[k] for k in ("dtw_ptr", "dpw_ptr", "dpb_ptr", "dsw_ptr"))
    dpre = tile.written["dpre_ptr"]
    assert dpre == prob.batch * prob.ci * 4 * x_bytes // (prob.batch * prob.cx * 4 * 2 ** len(prob.size))
    forward = route_bytes(rec[:2]) / (3 * x_bytes + g_bytes)
    backward = route_bytes(rec[2:]) / (5 * x_bytes + 2 * g_bytes + slots + 2 * dpre)
    assert 1 <= forward <= 1.02, forward
    assert 1 <= backward <= 1.02, backward
    assert slots <= 0.8 * x_bytes  # 528 slots of 32 x (256 + 128 + 2) fp32 at this shape
