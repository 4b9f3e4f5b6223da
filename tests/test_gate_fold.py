"""The folded output of a single AttentionGate (unimri.nn.sas_head.gate_output_folded) equals
``out_norm(out_conv(alpha * x))`` of the modules and of the float64 reference: forward,
every gradient, batch-norm running statistics; train and eval; 2D and 3D; bf16 autocast;
state dicts unchanged."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from unimri.nn import AttentionGate
from unimri.nn.eager import OktayAttentionGate
from unimri.nn.sas_head import foldable_gate
from unimri_kernels.reference.attention_gate import attention_gate_reference

F64 = torch.float64


def _randomise(module: torch.nn.Module) -> None:
    """Non-default parameters and running statistics, so that no term vanishes by accident."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.2, 0.5)
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)


def _pair(norm, d, train=True, dtype=F64, cx=6, cg=8, focal=1.0):
    fast = AttentionGate(cx, cg, spatial_dims=d, norm=norm, focal=focal).to(dtype)
    _randomise(fast)
    fast.train(train)
    slow = copy.deepcopy(fast)
    slow.fold = False
    return fast, slow


def _inputs(d, dtype=F64, cx=6, cg=8, batch=3, g_grid=None):
    spatial = (10, 11, 6)[:d]  # 11: odd, not a multiple of subsample
    g_spatial = g_grid or tuple(s // 2 for s in spatial)
    x = torch.randn(batch, cx, *spatial, dtype=dtype).relu().add(0.3).requires_grad_()
    g = torch.randn(batch, cg, *g_spatial, dtype=dtype, requires_grad=True)
    return x, g


def _reference_module(gate: AttentionGate):
    """``out_norm(out_conv(y))`` with y and alpha from the float64 reference gate."""
    def run(x, g):
        y, alpha = attention_gate_reference(x, g, gate.theta_weight, gate.phi_weight, gate.phi_bias,
                                            gate.psi_weight, gate.psi_bias, gate.subsample,
                                            gate.focal)
        return gate.out_norm(gate.out_conv(y)), alpha
    return run


def _outputs_and_grads(fn, params, x, g, grad_out, grad_alpha):
    out, alpha = fn(x, g)
    grads = torch.autograd.grad([out, alpha], [x, g, *params], [grad_out, grad_alpha])
    return out, alpha, grads


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("norm", ["batch", None])
def test_folded_gate_equals_modules_and_reference_float64(d, train, norm):
    fast, slow = _pair(norm, d, train, focal=1.5)
    ref = copy.deepcopy(slow)
    assert foldable_gate(fast)
    x, g = _inputs(d, g_grid=(5, 7, 3)[:d])  # g on another grid than theta x: resampled
    grad_out = torch.randn(x.shape, dtype=F64)
    grad_alpha = torch.randn((x.shape[0], 1, *x.shape[2:]), dtype=F64)
    names = ["x", "g"] + [n for n, _ in fast.named_parameters()]
    res_f = _outputs_and_grads(fast, list(fast.parameters()), x, g, grad_out, grad_alpha)
    res_s = _outputs_and_grads(slow, list(slow.parameters()), x, g, grad_out, grad_alpha)
    res_r = _outputs_and_grads(_reference_module(ref), list(ref.parameters()), x, g, grad_out,
                               grad_alpha)
    for other, what in ((res_s, "modules"), (res_r, "reference")):
        torch.testing.assert_close(res_f[0], other[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(res_f[1], other[1], rtol=1e-12, atol=1e-12)
        for name, a, b in zip(names, res_f[2], other[2]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10,
                                       msg=lambda m: f"grad of {name} vs {what}: {m}")
    for (name, a), b, c in zip(fast.named_buffers(), slow.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")


def test_running_statistics_over_steps_then_eval():
    fast, slow = _pair("batch", 2)
    for m in (*fast.modules(), *slow.modules()):
        if isinstance(m, _BatchNorm):
            m.momentum = None  # cumulative moving average: uses num_batches_tracked
    for _ in range(3):
        x, g = _inputs(2)
        fast(x, g)
        slow(x, g)
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    fast.eval()
    slow.eval()
    x, g = _inputs(2)
    torch.testing.assert_close(fast(x, g)[0], slow(x, g)[0], rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64():
    fast, slow = _pair("batch", 2, dtype=torch.float32, cx=16, cg=32)
    x, g = _inputs(2, torch.float32, cx=16, cg=32, batch=4)
    want = copy.deepcopy(slow).double()(x.double(), g.double())[0]
    torch.testing.assert_close(fast(x, g)[0].double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_bf16_autocast_as_accurate_as_modules(train):
    """Under bf16 autocast both paths round; the folded one must be about as accurate (vs
    the float64 modules) as the modules in bf16, outputs and gradients alike."""
    fast, slow = _pair("batch", 2, train=train, dtype=torch.float32, cx=16, cg=32)
    ref = copy.deepcopy(slow).double()
    x, g = _inputs(2, torch.float32, cx=16, cg=32, batch=4)
    grad_out = torch.randn(x.shape)
    grad_alpha = torch.zeros((x.shape[0], 1, *x.shape[2:]))
    params = {m: list(m.parameters()) for m in (fast, slow, ref)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, _, grads_f = _outputs_and_grads(fast, params[fast], x, g, grad_out.bfloat16(),
                                               grad_alpha.bfloat16())
        out_s, _, grads_s = _outputs_and_grads(slow, params[slow], x, g, grad_out.bfloat16(),
                                               grad_alpha.bfloat16())
    assert out_f.dtype == torch.bfloat16
    assert all(gr.dtype == torch.float32 for gr in grads_f[2:])  # fp32 parameters, fp32 grads
    out_r, _, grads_r = _outputs_and_grads(ref, params[ref], x.double(), g.double(),
                                           grad_out.double(), grad_alpha.double())
    scale = out_r.abs().max()
    err_f = (out_f.double() - out_r).abs().max() / scale
    err_s = (out_s.double() - out_r).abs().max() / scale
    assert err_f < 0.05 and err_f <= 2 * err_s + 1e-3, (err_f, err_s)
    top = max(r.norm() for r in grads_r)
    keep = [i for i, r in enumerate(grads_r) if r.norm() > 1e-6 * top]
    rel_f = [((grads_f[i].double() - grads_r[i]).norm() / grads_r[i].norm()).item() for i in keep]
    rel_s = [((grads_s[i].double() - grads_r[i]).norm() / grads_r[i].norm()).item() for i in keep]
    mean_f, mean_s = sum(rel_f) / len(keep), sum(rel_s) / len(keep)
    assert mean_f <= 1.5 * mean_s + 1e-3 and max(rel_f) < 0.3, (mean_f, mean_s, max(rel_f))


def test_state_dict_keys_unchanged_and_old_state_dict_loads():
    fast, slow = _pair("batch", 2)
    assert set(fast.state_dict()) == {
        "theta_weight", "phi_weight", "phi_bias", "psi_weight", "psi_bias", "out_conv.weight",
        "out_norm.weight", "out_norm.bias", "out_norm.running_mean", "out_norm.running_var",
        "out_norm.num_batches_tracked"}
    fresh = AttentionGate(6, 8, spatial_dims=2).double()
    fresh.load_state_dict(slow.state_dict(), strict=True)
    fresh.eval()
    slow.eval()
    x, g = _inputs(2)
    torch.testing.assert_close(fresh(x, g)[0], slow(x, g)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_other_norms_use_the_modules(norm):
    fast, slow = _pair(norm, 2)
    assert not foldable_gate(fast)
    x, g = _inputs(2)
    torch.testing.assert_close(fast(x, g)[0], slow(x, g)[0], rtol=0, atol=0)


def test_single_value_per_channel_in_training_is_refused():
    """As nn.BatchNorm refuses it (the module path raises the same)."""
    fast = AttentionGate(6, 8, subsample=1).double()
    slow = copy.deepcopy(fast)
    slow.fold = False
    x, g = torch.randn(1, 6, 1, 1, dtype=F64), torch.randn(1, 8, 1, 1, dtype=F64)
    for module in (fast, slow):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            module(x, g)


@pytest.mark.parametrize("d", [2, 3])
def test_oktay_eager_block_matches(d):
    """The plain-PyTorch Oktay gate (the benchmark's baseline) computes the same function."""
    fast, _ = _pair("batch", d)
    eager = OktayAttentionGate(fast)
    x, g = _inputs(d)
    grad_out = torch.randn(x.shape, dtype=F64)
    grad_alpha = torch.randn((x.shape[0], 1, *x.shape[2:]), dtype=F64)
    res_e = _outputs_and_grads(eager, [], x, g, grad_out, grad_alpha)
    res_f = _outputs_and_grads(fast, [], x, g, grad_out, grad_alpha)
    for a, b in zip((res_e[0], res_e[1], *res_e[2]), (res_f[0], res_f[1], *res_f[2])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
