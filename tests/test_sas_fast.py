"""The folded selective-attention merge (unimri.nn.sas_head) equals the per-gate modules, and
the folded output of a single AttentionGate equals ``out_norm(out_conv(alpha * x))`` of the
modules and of the float64 reference: forward, gradients, running statistics; train and
eval; 2D and 3D; bf16 autocast; old state dicts load unchanged.

``gates=None`` in the helpers stands for a single :class:`AttentionGate`."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from unimri.nn import AttentionGate, SelectiveAttention
from unimri.nn.plain import OktayAttentionGate, OktaySelectiveAttention
from unimri.nn.sas_head import foldable, foldable_gate
from unimri_kernels.ops.sas_head import sas_head
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


def _pair(norm, d, gates=2, train=True, dtype=F64, cx=6, cg=8, focal=1.0):
    if gates is None:
        fast = AttentionGate(cx, cg, spatial_dims=d, norm=norm, focal=focal).to(dtype)
    else:
        fast = SelectiveAttention(cx, cg, spatial_dims=d, num_gates=gates, norm=norm,
                                  focal=focal).to(dtype)
    _randomise(fast)
    fast.train(train)
    slow = copy.deepcopy(fast)
    slow.fold = False
    return fast, slow


def _inputs(d, dtype=F64, cx=6, cg=8, batch=3, g_grid=None, grid=(10, 12, 6)):
    spatial = grid[:d]
    g_spatial = g_grid or tuple(s // 2 for s in spatial)
    x = torch.randn(batch, cx, *spatial, dtype=dtype).relu().requires_grad_()
    g = torch.randn(batch, cg, *g_spatial, dtype=dtype, requires_grad=True)
    return x, g


def _is_foldable(module) -> bool:
    return foldable_gate(module) if isinstance(module, AttentionGate) else foldable(module)


def _outputs_and_grads(module, x, g, grad_out, grad_alpha=None, params=None):
    out, alpha = module(x, g)
    params = list(module.parameters()) if params is None else params
    if grad_alpha is None:
        return out, alpha, torch.autograd.grad(out, [x, g, *params], grad_out)
    return out, alpha, torch.autograd.grad([out, alpha], [x, g, *params], [grad_out, grad_alpha])


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("gates", [1, 3])
def test_folded_equals_per_gate_float64(d, train, norm, gates):
    fast, slow = _pair(norm, d, gates, train)
    assert foldable(fast)
    x, g = _inputs(d, g_grid=(5, 7, 3)[:d])  # g on another grid than theta x: resampled
    grad_out = torch.randn(x.shape, dtype=F64)
    out_f, alpha_f, grads_f = _outputs_and_grads(fast, x, g, grad_out)
    out_s, alpha_s, grads_s = _outputs_and_grads(slow, x, g, grad_out)
    torch.testing.assert_close(out_f, out_s, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha_f, alpha_s, rtol=0, atol=0)
    for name, a, b in zip(["x", "g"] + [n for n, _ in fast.named_parameters()], grads_f, grads_s):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
    for (name, a), b in zip(fast.named_buffers(), slow.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")


@pytest.mark.parametrize("gates", [2, None])
def test_running_statistics_over_steps_and_cumulative_momentum(gates):
    fast, slow = _pair("batch", 2, gates)
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


@pytest.mark.parametrize("gates", [2, None])
def test_float32_close_to_float64(gates):
    fast, slow = _pair("batch", 2, gates, dtype=torch.float32, cx=16, cg=32)
    x, g = _inputs(2, torch.float32, cx=16, cg=32, batch=4)
    ref = copy.deepcopy(slow).double()
    out = fast(x, g)[0]
    want = ref(x.double(), g.double())[0]
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gates", [2, None])
@pytest.mark.parametrize("train", [True, False])
def test_bf16_autocast_as_accurate_as_per_gate(train, gates):
    """Under bf16 autocast both paths round; the folded one must be no less accurate
    (vs the float64 per-gate module) than the per-gate one, outputs and gradients alike."""
    fast, slow = _pair("batch", 2, gates, train=train, dtype=torch.float32, cx=16, cg=32)
    ref = copy.deepcopy(slow).double()
    x, g = _inputs(2, torch.float32, cx=16, cg=32, batch=4)
    grad_out = torch.randn(x.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, _, grads_f = _outputs_and_grads(fast, x, g, grad_out.bfloat16())
        out_s, _, grads_s = _outputs_and_grads(slow, x, g, grad_out.bfloat16())
    assert out_f.dtype == torch.bfloat16
    assert all(gr.dtype == torch.float32 for gr in grads_f)  # fp32 parameters get fp32 grads
    out_r, _, grads_r = _outputs_and_grads(ref, x.double(), g.double(), grad_out.double())
    scale = out_r.abs().max()
    err_f = (out_f.double() - out_r).abs().max() / scale
    err_s = (out_s.double() - out_r).abs().max() / scale
    assert err_f < 0.05 and err_f <= 2 * err_s + 1e-3, (err_f, err_s)
    # bf16 gradients of either path are off by a few % (more where terms cancel); compare
    # the paths' mean relative error over every gradient whose true value is not ~0
    # (in training the gates' norm biases have none: the merge norm removes them)
    top = max(r.norm() for r in grads_r)
    keep = [i for i, r in enumerate(grads_r) if r.norm() > 1e-6 * top]
    rel_f = [((grads_f[i].double() - grads_r[i]).norm() / grads_r[i].norm()).item() for i in keep]
    rel_s = [((grads_s[i].double() - grads_r[i]).norm() / grads_r[i].norm()).item() for i in keep]
    mean_f, mean_s = sum(rel_f) / len(keep), sum(rel_s) / len(keep)
    assert mean_f <= 1.5 * mean_s and max(rel_f) < 0.3, (mean_f, mean_s, max(rel_f))


def test_old_state_dict_loads_and_keys_unchanged():
    """The layout of the per-gate modules is kept: a state dict saved before the folded
    path existed (these keys) loads strictly and gives the same outputs."""
    fast, slow = _pair("batch", 2, gates=2)
    expected = {f"gates.{k}.{n}" for k in range(2) for n in (
        "theta_weight", "phi_weight", "phi_bias", "psi_weight", "psi_bias", "out_conv.weight",
        "out_norm.weight", "out_norm.bias", "out_norm.running_mean", "out_norm.running_var",
        "out_norm.num_batches_tracked")}
    expected |= {"merge.0.weight", "merge.1.weight", "merge.1.bias", "merge.1.running_mean",
                 "merge.1.running_var", "merge.1.num_batches_tracked"}
    assert set(fast.state_dict()) == expected
    fresh = SelectiveAttention(6, 8, spatial_dims=2).double()
    fresh.load_state_dict(slow.state_dict(), strict=True)
    fresh.eval()
    slow.eval()
    x, g = _inputs(2)
    torch.testing.assert_close(fresh(x, g)[0], slow(x, g)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gates", [2, None])
@pytest.mark.parametrize("norm", ["instance", "group"])
def test_other_norms_use_the_per_gate_path(norm, gates):
    fast, slow = _pair(norm, 2, gates)
    assert not _is_foldable(fast)
    x, g = _inputs(2)
    torch.testing.assert_close(fast(x, g)[0], slow(x, g)[0], rtol=0, atol=0)


def test_folded_merge_gradcheck():
    torch.manual_seed(1)
    k, c, b, n = 2, 3, 2, 5
    w = torch.randn(k, c, c, dtype=F64, requires_grad=True)
    gamma = torch.rand(k, c, dtype=F64).add(0.5).requires_grad_()
    beta = torch.randn(k, c, dtype=F64, requires_grad=True)
    merge = torch.randn(c, k, c, dtype=F64, requires_grad=True)
    x = torch.randn(b, c, n, dtype=F64, requires_grad=True)
    alpha = torch.rand(b, k, n, dtype=F64, requires_grad=True)  # the gates' attention maps

    def fn(*args):
        return sas_head(*args, 1e-5)[0]

    assert torch.autograd.gradcheck(fn, (x, alpha, w, gamma, beta, merge))


@pytest.mark.parametrize("module_cls", [SelectiveAttention, AttentionGate])
def test_single_value_per_channel_in_training_is_refused(module_cls):
    """As nn.BatchNorm refuses it (the per-gate path raises the same)."""
    fast = module_cls(6, 8, subsample=1).double()
    slow = copy.deepcopy(fast)
    slow.fold = False
    x, g = torch.randn(1, 6, 1, 1, dtype=F64), torch.randn(1, 8, 1, 1, dtype=F64)
    for module in (fast, slow):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            module(x, g)


@pytest.mark.parametrize("d", [2, 3])
def test_oktay_eager_block_matches(d):
    """The plain-PyTorch Oktay block (the benchmarks' plain-PyTorch baseline) computes the same
    function as SelectiveAttention once it holds the same weights."""
    fast, slow = _pair("batch", d, gates=2)
    eager = OktaySelectiveAttention.from_module(slow)
    x, g = _inputs(d)
    grad_out = torch.randn(x.shape, dtype=F64)
    out_e, alpha_e, grads_e = _outputs_and_grads(eager, x, g, grad_out)
    out_f, alpha_f, grads_f = _outputs_and_grads(fast, x, g, grad_out)
    torch.testing.assert_close(out_e, out_f, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha_e, alpha_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_e[0], grads_f[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads_e[1], grads_f[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("norm", ["batch", None])
def test_folded_single_gate_equals_modules_and_reference_float64(d, train, norm):
    """One AttentionGate, folded, against its modules and against the float64 reference gate
    followed by the modules; alpha's gradient is nonzero, focal != 1."""
    fast, slow = _pair(norm, d, None, train, focal=1.5)
    ref = copy.deepcopy(slow)
    assert foldable_gate(fast)

    def reference(x, g):
        y, alpha = attention_gate_reference(x, g, ref.theta_weight, ref.phi_weight, ref.phi_bias,
                                            ref.psi_weight, ref.psi_bias, ref.subsample, ref.focal)
        return ref.out_norm(ref.out_conv(y)), alpha

    x, g = _inputs(d, g_grid=(5, 7, 3)[:d], grid=(10, 11, 7))  # odd: pixels outside patches
    grad_out = torch.randn(x.shape, dtype=F64)
    grad_alpha = torch.randn((x.shape[0], 1, *x.shape[2:]), dtype=F64)
    names = ["x", "g"] + [n for n, _ in fast.named_parameters()]
    res_f = _outputs_and_grads(fast, x, g, grad_out, grad_alpha)
    res_s = _outputs_and_grads(slow, x, g, grad_out, grad_alpha)
    res_r = _outputs_and_grads(reference, x, g, grad_out, grad_alpha, list(ref.parameters()))
    for other, what in ((res_s, "modules"), (res_r, "reference")):
        torch.testing.assert_close(res_f[0], other[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(res_f[1], other[1], rtol=1e-12, atol=1e-12)
        for name, a, b in zip(names, res_f[2], other[2]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10,
                                       msg=lambda m: f"grad of {name} vs {what}: {m}")
    for (name, a), b, c in zip(fast.named_buffers(), slow.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")


def test_single_gate_state_dict_unchanged_and_eager_gate_matches():
    """The gate's state-dict keys are those of its modules (old checkpoints load strictly),
    and Oktay's plain-PyTorch gate (the benchmark's baseline) computes the same function."""
    fast, slow = _pair("batch", 2, None)
    assert set(fast.state_dict()) == {
        "theta_weight", "phi_weight", "phi_bias", "psi_weight", "psi_bias", "out_conv.weight",
        "out_norm.weight", "out_norm.bias", "out_norm.running_mean", "out_norm.running_var",
        "out_norm.num_batches_tracked"}
    fresh = AttentionGate(6, 8, spatial_dims=2).double()
    fresh.load_state_dict(slow.state_dict(), strict=True)
    eager = OktayAttentionGate(fast)
    x, g = _inputs(2)
    grad_out = torch.randn(x.shape, dtype=F64)
    grad_alpha = torch.randn((x.shape[0], 1, *x.shape[2:]), dtype=F64)
    res_e = _outputs_and_grads(eager, x, g, grad_out, grad_alpha, [])
    res_f = _outputs_and_grads(fast, x, g, grad_out, grad_alpha, [])
    for a, b in zip((res_e[0], res_e[1], *res_e[2]), (res_f[0], res_f[1], *res_f[2])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    fresh.eval()
    slow.eval()
    torch.testing.assert_close(fresh(x, g)[0], slow(x, g)[0], rtol=1e-10, atol=1e-10)
