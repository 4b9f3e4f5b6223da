"""What only a GPU can check: mixed-precision training of every backbone with SAS on CUDA
(bf16 and fp16 with a gradient scaler), the attention gate under CUDA autocast against the
float64 reference, deterministic Triton results, a short ``unimri train`` on CUDA with the
default ``--amp auto``, and NCCL DDP when there are two GPUs. Skipped without CUDA;
``scripts/gpu_check.sh`` runs these with the op-level CUDA tests and the GPU benchmarks."""
from __future__ import annotations

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
from unimri_kernels.ops.attention_gate import attention_gate
from unimri_kernels.reference.attention_gate import attention_gate_reference

pytestmark = [requires_cuda, pytest.mark.cuda]
SHAPES = {2: (64, 48), 3: (24, 20, 16)}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backbone_with_sas_trains_under_cuda_autocast(name, spatial_dims, amp):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=spatial_dims, in_channels=1, num_classes=2, features=8,
                         attention="sas").to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scaler = grad_scaler_for(dev, amp)
    x = torch.randn((2, 1) + SHAPES[spatial_dims], device=dev)
    target = (x[:, 0] > 0.5).long()
    losses = []
    for _ in range(3):
        with autocast_for(dev, amp):
            logits = model(x)
        assert logits.dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
        loss = F.cross_entropy(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        (scaler.step(opt), scaler.update()) if scaler is not None else opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [2, 3])
def test_gate_under_cuda_autocast_matches_reference(dtype, d):
    gen = torch.Generator().manual_seed(1)
    shape = (33, 47) if d == 2 else (17, 13, 11)
    x = torch.randn((2, 32) + shape, generator=gen)
    g = torch.randn((2, 64) + tuple(max(1, n // 2) for n in shape), generator=gen)
    params = [0.2 * torch.randn(s, generator=gen) for s in
              [(16, 32) + (2,) * d, (16, 64), (16,), (16,), (1,)]]
    cuda_params = [p.cuda().requires_grad_() for p in params]
    with torch.autocast("cuda", dtype):
        y, alpha = attention_gate(x.cuda(), g.cuda(), *cuda_params)
    assert y.dtype == alpha.dtype == dtype
    y.float().sum().backward()
    y_ref, a_ref = attention_gate_reference(x.double(), g.double(), *[p.double() for p in params],
                                            subsample=2, focal=1.0)
    assert (alpha.double().cpu() - a_ref).abs().max() <= 3e-2
    assert (y.double().cpu() - y_ref).abs().max() <= 3e-2 * x.abs().max()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in cuda_params)


def test_triton_is_bitwise_deterministic_run_to_run():
    from unimri.losses import UnifiedFocalLoss
    from unimri.nn import SelectiveAttention

    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            torch.manual_seed(0)
            module = SelectiveAttention(16, 32, spatial_dims=2).cuda()
            x = torch.randn(2, 16, 64, 48, device="cuda", requires_grad=True)
            g = torch.randn(2, 32, 32, 24, device="cuda")
            out, _ = module(x, g)
            loss = UnifiedFocalLoss()(out[:, :2], (x[:, 0] > 0).long())
            loss.backward()
            results.append([loss.detach(), x.grad.clone()] +
                           [p.grad.clone() for p in module.parameters()])
        for a, b in zip(*results):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


def test_cli_train_on_cuda_with_default_amp(tmp_path):
    from unimri.cli import main
    from unimri.train.checkpoint import load_checkpoint

    out = str(tmp_path / "run")
    data = json.dumps({"num_cases": 6, "size": 64})
    assert main(["train", "--model", "unet", "--attention", "sas", "--features", "8", "--dataset", "phantom",
                 "--dataset-kwargs", data, "--stages", "32,64", "--batch-size", "4", "--epochs", "1,2",
                 "--folds", "2", "--fold", "0", "--device", "cuda", "--no-progress", "--out", out]) == 0
    weights = load_checkpoint(f"{out}/fold0/model.pt")["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


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
