"""What only a GPU can check, each against the float64 reference with a stated tolerance:
the backbones with SAS in float32 on CUDA (TF32 off) and their mixed-precision training steps
(bf16, fp16 with a gradient scaler whose first steps may overflow), the attention gate on the
fp16/bf16 tensor-core and TF32 paths, the loss on CUDA against the C++ kernel on the same inputs
moved to the CPU, deterministic mode bitwise (two runs equal), gradcheck, a short
``unimri train`` on CUDA and NCCL DDP with two GPUs.

The checks are functions of the device: each CUDA test has a CPU twin on one small case (not
marked ``cuda``) that runs the same assertions in CI, so the test code itself is exercised.
``scripts/gpu_check.sh`` runs every ``cuda``-marked test of the suite."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_cuda
from unimri.models import MODEL_NAMES, create_model
from unimri.train.precision import autocast_for, grad_scaler_for
from unimri_kernels.dispatch import use_backend
from unimri_kernels.ops.attention_gate import attention_gate
from unimri_kernels.reference.attention_gate import attention_gate_reference

SHAPES = {2: (64, 48), 3: (24, 20, 16)}
CUDA = [pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]

# max |result - float64 reference| / max |reference|, per path. fp32 IEEE: rounding of a few
# hundred fp32 products; TF32: 10-bit mantissa operands; fp16 (10-bit mantissa) is held to a
# tighter bound than bf16 (7-bit). The fp16/bf16 bounds are about three times the largest error
# of the C++ kernels (same precision policy) on these problems.
FORWARD_TOL = {"fp32": 1e-5, "tf32": 5e-3, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}
# ||grad - reference|| / ||reference|| (L2 over each gradient tensor): the ReLU kinks of the
# gate move with the rounding of its pre-activation, so low-precision gradients are compared
# in norm, not element by element
GRAD_TOL = {"fp32": 1e-5, "tf32": 5e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def _rel_max(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want).abs().max() / want.abs().max()).item()


def _rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want).norm() / want.norm()).item()


def assert_grads_close(params, ref_params, tol: float) -> None:
    """Each parameter's gradient within ``tol`` of the reference's in L2 norm, relative to that
    gradient's norm but at least 1 % of the whole gradient's (gradients that are zero in exact
    arithmetic, e.g. a bias before a norm layer, hold only rounding noise)."""
    pairs = [(name, p.grad.double().cpu(), q.grad.double().cpu()) for (name, p), q in zip(params, ref_params)]
    total = torch.cat([q.flatten() for _, _, q in pairs]).norm().item()
    for name, got, want in pairs:
        assert torch.isfinite(got).all(), name
        err = (got - want).norm().item()
        assert err <= tol * max(want.norm().item(), 1e-2 * total), f"{name}: {err:.2e} (|ref| {want.norm():.2e})"


@pytest.fixture
def tf32_off():
    """TF32 off in cuBLAS and cuDNN for the duration of a test (results meet float64 references)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# ------------------------------------------------------------------ backbones
def check_backbone_fp32(name: str, spatial_dims: int, device: str) -> None:
    """Eval-mode forward and backward in float32 on ``device`` against the same weights in
    float64 on the CPU: logits and every parameter gradient within 1e-4."""
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=spatial_dims, in_channels=1, num_classes=2, features=8,
                         attention="sas").eval()
    ref = copy.deepcopy(model).double()
    x = torch.randn((2, 1) + SHAPES[spatial_dims])
    target = (x[:, 0] > 0.5).long()
    ref_logits = ref(x.double())
    F.cross_entropy(ref_logits, target).backward()
    model.to(device)
    logits = model(x.to(device))
    F.cross_entropy(logits, target.to(device)).backward()
    assert _rel_max(logits, ref_logits) <= 1e-4
    assert_grads_close(model.named_parameters(), ref.parameters(), 1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("device", CUDA)
def test_backbone_fp32_matches_float64(name, spatial_dims, device, tf32_off):
    check_backbone_fp32(name, spatial_dims, device)


def test_backbone_fp32_check_on_cpu():
    check_backbone_fp32("unet", 2, "cpu")


def check_amp_training(name: str, spatial_dims: int, amp: str, device: str, size: tuple[int, ...] | None = None,
                       steps: int = 12, min_taken: int = 2) -> None:
    """Training steps under autocast: the logits come in the autocast dtype; with fp16 the
    gradient scaler may find inf/NaN in the first steps (its scale starts at 2**16): such a
    step leaves every weight bitwise unchanged and halves the scale; a step taken has finite
    unscaled gradients, moves the weights, and its gradients are within a relative L2 error of 1
    of the float32 ones (catches blown-up or NaN gradients; batch norm over the deepest, tiny
    feature maps amplifies half-precision rounding too much for a tight bound on whole
    networks: tight bounds are per op)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=spatial_dims, in_channels=1, num_classes=2, features=8,
                         attention="sas").to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scaler = grad_scaler_for(dev, amp)
    x = torch.randn((2, 1) + (size or SHAPES[spatial_dims]), device=dev)
    target = (x[:, 0] > 0.5).long()
    taken = 0
    for _ in range(steps):
        fp32_model = copy.deepcopy(model)
        F.cross_entropy(fp32_model(x), target).backward()
        with autocast_for(dev, amp):
            logits = model(x)
        assert logits.dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
        loss = F.cross_entropy(logits.float(), target)
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        before = [p.detach().clone() for p in model.parameters()]
        if scaler is None:
            loss.backward()
            overflow = False
        else:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            overflow = sum(v.item() for v in scaler._found_inf_per_device(opt).values()) > 0
        if not overflow:
            assert_grads_close(model.named_parameters(), fp32_model.parameters(), 1.0)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        if overflow:
            assert not moved and scaler.get_scale() == scale / 2
        else:
            assert moved
            taken += 1
    assert taken >= min_taken


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("device", CUDA)
def test_backbone_with_sas_trains_under_cuda_autocast(name, spatial_dims, amp, device, tf32_off):
    check_amp_training(name, spatial_dims, amp, device)


def test_amp_training_check_on_cpu():
    check_amp_training("unet", 2, "fp16", "cpu", size=(16, 16), steps=4, min_taken=1)


# ------------------------------------------------------------------ attention gate
def _gate_problem(d: int):
    gen = torch.Generator().manual_seed(1)
    shape = (33, 47) if d == 2 else (17, 13, 11)
    x = torch.randn((2, 32) + shape, generator=gen, dtype=torch.float64)
    g = torch.randn((2, 64) + tuple(max(1, n // 2) for n in shape), generator=gen, dtype=torch.float64)
    params = [0.2 * torch.randn(s, generator=gen, dtype=torch.float64)
              for s in [(16, 32) + (2,) * d, (16, 64), (16,), (16,), (1,)]]
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return [x, g, *params], grad_y


def check_gate_precision(d: int, path, device: str) -> None:
    """The gate's outputs and all seven gradients on one precision path against float64.
    ``path``: "fp32" (IEEE), "tf32" (fp32 inputs, TF32 dot products) or torch.float16 /
    torch.bfloat16 (autocast: half operands on tensor cores, fp32 accumulation)."""
    inputs, grad_y = _gate_problem(d)
    leaves = [t.clone().requires_grad_() for t in inputs]
    y_ref, a_ref = attention_gate_reference(*leaves, subsample=2, focal=1.0)
    ref_grads = torch.autograd.grad(y_ref, leaves, grad_y)
    run = [t.float().to(device).requires_grad_() for t in inputs]
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = path == "tf32"
    try:
        if isinstance(path, torch.dtype):
            with torch.autocast(device, path):
                y, alpha = attention_gate(*run, subsample=2, focal=1.0)
            assert y.dtype == alpha.dtype == path
        else:
            y, alpha = attention_gate(*run, subsample=2, focal=1.0)
        grads = torch.autograd.grad(y, run, grad_y.to(y.dtype).to(device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    assert _rel_max(y, y_ref) <= FORWARD_TOL[path]
    assert _rel_max(alpha, a_ref) <= FORWARD_TOL[path]
    names = ["x", "g", "theta_weight", "phi_weight", "phi_bias", "psi_weight", "psi_bias"]
    for name, got, want in zip(names, grads, ref_grads):
        assert got.dtype == torch.float32 or name in ("x", "g"), name  # fp32 parameters keep fp32 grads
        err = _rel_l2(got, want)
        assert err <= GRAD_TOL[path], f"grad {name}: {err:.2e} > {GRAD_TOL[path]:.0e} ({path})"


@pytest.mark.parametrize("path", ["fp32", "tf32", torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("device", CUDA)
def test_gate_precision_paths_match_float64(d, path, device):
    check_gate_precision(d, path, device)


@pytest.mark.parametrize("path", ["fp32", torch.bfloat16], ids=str)
def test_gate_precision_check_on_cpu(path):
    check_gate_precision(2, path, "cpu")


# ------------------------------------------------------------------ loss: CUDA vs C++
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", CUDA)
def test_loss_on_cuda_matches_cpp_kernel_on_same_inputs(dtype, device):
    """The Triton loss on CUDA and the C++ kernel on the same inputs moved to the CPU: loss and
    gradient agree to the dtype's rounding (both accumulate in fp32, fp64 for fp64)."""
    from unimri.losses import UnifiedFocalLoss

    gen = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(2, 4, 37, 29, generator=gen)).to(dtype)
    target = torch.randint(0, 4, (2, 37, 29), generator=gen)
    target[:, :5] = 0  # some all-background rows
    loss_fn = UnifiedFocalLoss()
    results = {}
    for dev, backend in ((device, "auto"), ("cpu", "cpp")):
        z = logits.to(dev).requires_grad_()
        with use_backend(backend):
            loss = loss_fn(z, target.to(dev))
        loss.backward(torch.tensor(0.7, dtype=loss.dtype, device=dev))
        results[dev] = (loss.detach().cpu(), z.grad.cpu())
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    (cuda_loss, cuda_grad), (cpu_loss, cpu_grad) = results[device], results["cpu"]
    torch.testing.assert_close(cuda_loss, cpu_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(cuda_grad, cpu_grad, rtol=tol, atol=tol * cpu_grad.abs().max().item())


@pytest.mark.parametrize("device", CUDA)
def test_gate_gradcheck_in_deterministic_mode(device):
    """gradcheck on CUDA in float64: the default backward adds with float atomics (run-to-run
    differences in the last bits), so it runs in deterministic mode, where it must be exact
    run to run (nondet_tol=0)."""
    inputs, _ = _gate_problem(2)
    small = [inputs[0][:1, :3, :9, :7], inputs[1][:1, :4, :4, :3], inputs[2][:2, :3], inputs[3][:2, :4],
             inputs[4][:2], inputs[5][:2], inputs[6]]
    leaves = [t.contiguous().to(device).requires_grad_() for t in small]
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.autograd.gradcheck(lambda *a: attention_gate(*a, subsample=2, focal=1.0), leaves,
                                        eps=1e-6, atol=1e-7, nondet_tol=0.0)
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------ determinism
def check_bitwise_deterministic(device: str) -> None:
    """SelectiveAttention (gates + head with its bmm) and the loss, forward and backward, twice
    in deterministic mode: every result bitwise equal. On CUDA the bmm needs
    CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8), set here when the caller has not."""
    from unimri.losses import UnifiedFocalLoss
    from unimri.nn import SelectiveAttention

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            torch.manual_seed(0)
            module = SelectiveAttention(16, 32, spatial_dims=2).to(device)
            x = torch.randn(2, 16, 64, 48, device=device, requires_grad=True)
            g = torch.randn(2, 32, 32, 24, device=device)
            out, _ = module(x, g)
            loss = UnifiedFocalLoss()(out[:, :2], (x[:, 0] > 0).long())
            loss.backward()
            results.append([loss.detach(), x.grad.clone()] + [p.grad.clone() for p in module.parameters()])
        for a, b in zip(*results):
            assert torch.equal(a, b)
        assert torch.isfinite(results[0][0]) and results[0][1].abs().sum() > 0
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("device", CUDA)
def test_triton_is_bitwise_deterministic_run_to_run(device):
    check_bitwise_deterministic(device)


def test_determinism_check_on_cpu():
    check_bitwise_deterministic("cpu")


# ------------------------------------------------------------------ end to end
@requires_cuda
@pytest.mark.cuda
def test_cli_train_on_cuda_with_default_amp(tmp_path):
    """``unimri train`` on CUDA with the default ``--amp auto`` (bf16): the run learns (last
    epoch's training loss below the first's) and writes finite float32 weights."""
    from unimri.cli import main
    from unimri.train.checkpoint import load_checkpoint

    out = str(tmp_path / "run")
    data = json.dumps({"num_cases": 6, "size": 64})
    assert main(["train", "--model", "unet", "--attention", "sas", "--features", "8", "--dataset", "phantom",
                 "--dataset-kwargs", data, "--stages", "32,64", "--batch-size", "4", "--epochs", "1,4",
                 "--lr", "0.05", "--folds", "2", "--fold", "0", "--device", "cuda", "--no-progress",
                 "--out", out]) == 0
    state = load_checkpoint(f"{out}/fold0/model.pt")
    weights = state["model"]
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    losses = [h["train_loss"] for h in state["history"]]
    assert len(losses) == 5 and losses[-1] < losses[0], losses


@requires_cuda
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs two GPUs")
def test_two_gpu_nccl_training(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "unimri", "train", "--model", "unet", "--attention", "sas", "--features", "8",
           "--dataset", "phantom", "--dataset-kwargs", json.dumps({"num_cases": 8, "size": 64}),
           "--stages", "64", "--batch-size", "4", "--epochs", "2", "--folds", "2", "--fold", "0",
           "--device", "cuda", "--no-progress", "--out", str(tmp_path / "ddp")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / "ddp" / "fold0" / "model.pt")
