"""channels_last inputs: fake (meta) and real outputs of the fused ops have the same strides,
so ``torch.compile`` plans the right memory layout, and compiled results equal eager ones."""
from __future__ import annotations

import pytest
import torch

from unimri.losses import UnifiedFocalLoss
from unimri.nn import SelectiveAttention
from unimri_kernels.dispatch import available_backends, use_backend
from unimri_kernels.ops.attention_gate import attention_gate


def _gate_inputs(d: int) -> list[torch.Tensor]:
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    shape = (2, 6) + (10, 12, 8)[:d]
    x = torch.randn(shape).to(memory_format=fmt)
    g = torch.randn((2, 4) + (5, 6, 4)[:d]).to(memory_format=fmt)
    params = [torch.randn(3, 6, *(2,) * d), torch.randn(3, 4), torch.randn(3), torch.randn(3), torch.randn(1)]
    return [x, g, *params]


@pytest.mark.parametrize("d", [2, 3])
def test_fake_and_real_strides_agree_for_channels_last(d):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _gate_inputs(d)
    real = torch.ops.unimri.attention_gate(*args, 2, 1.0)
    with FakeTensorMode() as mode:
        fake = torch.ops.unimri.attention_gate(*[mode.from_tensor(a) for a in args], 2, 1.0)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.stride() == f.stride()
    grads_in = [torch.randn_like(real[0]).to(memory_format=args[0].dim() == 4 and torch.channels_last
                                                  or torch.channels_last_3d), torch.randn_like(real[1])]
    real_b = torch.ops.unimri.attention_gate_backward(*grads_in, *args, 2, 1.0)
    with FakeTensorMode() as mode:
        fake_b = torch.ops.unimri.attention_gate_backward(
            *[mode.from_tensor(a) for a in grads_in + args], 2, 1.0)
    for r, f in zip(real_b, fake_b):
        assert r.shape == f.shape and r.stride() == f.stride()


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "reference"])
def test_opcheck_channels_last(backend):
    with use_backend(backend):
        torch.library.opcheck(torch.ops.unimri.attention_gate.default, (*_gate_inputs(2), 2, 1.0),
                              test_utils=("test_schema", "test_faketensor"))


def test_compiled_channels_last_model_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = SelectiveAttention(6, 4, spatial_dims=2).to(memory_format=torch.channels_last)
    loss_fn = UnifiedFocalLoss()
    x, g = _gate_inputs(2)[:2]
    target = torch.randint(0, 2, (2, 10, 12))

    def step(x, g):
        out, _ = module(x, g)
        return loss_fn(out[:, :2], target)

    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = step(x_eager, g)
    eager.backward()
    compiled = torch.compile(step, fullgraph=True)(x_comp, g)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_comp.grad, x_eager.grad, rtol=1e-4, atol=1e-6)
