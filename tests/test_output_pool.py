"""The C++ kernels' pool of recycled output blocks (csrc/output_pool.h): blocks come back for
the same size, never while a tensor still owns them, and the environment caps or disables it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from unimri.losses import UnifiedFocalLoss
from unimri_kernels import cpu_pool_stats, release_cpu_pool
from unimri_kernels.dispatch import has_cpp, use_backend
from unimri_kernels.ops.attention_gate import attention_gate
from unimri_kernels.reference.attention_gate import attention_gate_reference

pytestmark = pytest.mark.skipif(not has_cpp(), reason="C++ extension not built")


def _gate_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 128, 128, generator=g)  # y is 2 MiB: pooled
    gate = torch.randn(2, 32, 64, 64, generator=g)
    params = (0.2 * torch.randn(8, 16, 2, 2, generator=g), 0.2 * torch.randn(8, 32, generator=g),
              0.1 * torch.randn(8, generator=g), torch.randn(8, generator=g), torch.randn(1, generator=g))
    return x, gate, params


def _run_gate(x, gate, params):
    with use_backend("cpp"):
        return attention_gate(x, gate, *params, subsample=2)


def test_freed_output_block_is_handed_out_again():
    release_cpu_pool()  # earlier tests in this process may have left blocks of the same size
    x, gate, params = _gate_inputs()
    y, _ = _run_gate(x, gate, params)
    ptr = y.data_ptr()
    del y
    before = cpu_pool_stats()
    assert before["held_bytes"] >= 2 * 2 ** 20
    y2, _ = _run_gate(x, gate, params)
    assert y2.data_ptr() == ptr
    assert cpu_pool_stats()["hits"] > before["hits"]


def test_live_outputs_never_share_a_block_and_stay_intact():
    x, gate, params = _gate_inputs(1)
    y1, a1 = _run_gate(x, gate, params)
    kept = y1.clone()
    x2, gate2, params2 = _gate_inputs(2)
    y2, _ = _run_gate(x2, gate2, params2)
    assert y1.data_ptr() != y2.data_ptr()
    torch.testing.assert_close(y1, kept, rtol=0, atol=0)
    ref_y, ref_a = attention_gate_reference(*(t.double() for t in (x, gate, *params)), subsample=2, focal=1.0)
    torch.testing.assert_close(y1.double(), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a1.double(), ref_a, rtol=1e-5, atol=1e-5)


def test_recycled_blocks_give_the_same_gradients():
    x, gate, params = _gate_inputs(3)
    grads = []
    for _ in range(3):
        leaves = [t.clone().requires_grad_() for t in (x, gate, *params)]
        y, alpha = _run_gate(leaves[0], leaves[1], leaves[2:])
        (y.square().sum() + alpha.sum()).backward()
        grads.append([t.grad for t in leaves])
    for later in grads[1:]:
        for a, b in zip(grads[0], later):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loss_gradient_buffer_is_recycled():
    logits = torch.randn(4, 2, 256, 256, requires_grad=True)  # 2 MiB gradient
    target = (torch.rand(4, 256, 256) < 0.05).long()
    loss_fn = UnifiedFocalLoss()
    with use_backend("cpp"):
        loss_fn(logits, target).backward()
        first = logits.grad.clone()
        logits.grad = None
        hits = cpu_pool_stats()["hits"]
        loss_fn(logits, target).backward()
    assert cpu_pool_stats()["hits"] > hits
    torch.testing.assert_close(logits.grad, first, rtol=0, atol=0)


def test_release_gives_every_free_block_back():
    x, gate, params = _gate_inputs()
    y, _ = _run_gate(x, gate, params)
    del y
    assert cpu_pool_stats()["held_blocks"] >= 1
    release_cpu_pool()
    assert cpu_pool_stats() == {"held_bytes": 0, "held_blocks": 0, "hits": 0, "misses": 0}


def _in_subprocess(env_value: str) -> subprocess.CompletedProcess:
    code = (
        "import torch, unimri_kernels\n"
        "from unimri_kernels.dispatch import use_backend\n"
        "from unimri_kernels.ops.attention_gate import attention_gate\n"
        "x = torch.randn(2, 16, 128, 128); g = torch.randn(2, 16, 64, 64)\n"
        "p = (torch.randn(8, 16, 2, 2), torch.randn(8, 16), torch.randn(8), torch.randn(8), torch.randn(1))\n"
        "with use_backend('cpp'):\n"
        "    for _ in range(3):\n"
        "        y, a = attention_gate(x, g, *p)\n"
        "        del y, a\n"
        "print(unimri_kernels.cpu_pool_stats())\n")
    env = dict(os.environ, UNIMRI_CPU_POOL_MB=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_disables_the_pool():
    done = _in_subprocess("0")
    assert done.returncode == 0, done.stderr
    assert "'held_bytes': 0, 'held_blocks': 0, 'hits': 0, 'misses': 0" in done.stdout


def test_bad_environment_value_is_named():
    done = _in_subprocess("lots")
    assert done.returncode != 0
    assert "UNIMRI_CPU_POOL_MB" in done.stderr and "lots" in done.stderr


def _child_stats(queue) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's pool does not survive fork
    fresh = cpu_pool_stats()
    x, gate, params = _gate_inputs(4)
    y, _ = _run_gate(x, gate, params)
    ref, _ = attention_gate_reference(*(t.double() for t in (x, gate, *params)), subsample=2, focal=1.0)
    queue.put((fresh, bool(torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5))))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_with_an_empty_pool():
    import multiprocessing

    x, gate, params = _gate_inputs()
    y, _ = _run_gate(x, gate, params)
    del y
    assert cpu_pool_stats()["held_blocks"] >= 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_stats, args=(queue,))
    child.start()
    try:
        fresh, correct = queue.get(timeout=120)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert fresh == {"held_bytes": 0, "held_blocks": 0, "hits": 0, "misses": 0}
    assert correct
    assert cpu_pool_stats()["held_blocks"] >= 1  # the parent keeps its blocks
