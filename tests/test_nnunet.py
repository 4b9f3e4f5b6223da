"""unimri's nnU-Net v2 trainers inside nnU-Net: plan, preprocess, train, predict on a phantom.

Needs nnunetv2 (it imports torchvision, which must match the running torch): these tests
run in the virtual environment of ``scripts/test_nnunet.sh`` and skip elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="needs nnunetv2 (optional; run scripts/test_nnunet.sh)")
nib = pytest.importorskip("nibabel")

from unimri.data.phantom import phantom_cases  # noqa: E402
from unimri.integrations.nnunet.workspace import nnunet_environment, run_nnunet, write_raw_dataset  # noqa: E402

DATASET = 901
BUDGET = {"epochs": 3, "iterations": 8, "val_iterations": 2}


def _bin(name: str) -> str:
    """An nnU-Net console script of the running interpreter's environment."""
    import sys

    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A planned and preprocessed 2D phantom dataset: 8 training cases, 2 test cases of 48x48."""
    root = str(tmp_path_factory.mktemp("nnunet"))
    env = nnunet_environment(root, **BUDGET)
    cases = phantom_cases(10, spatial_dims=2, seed=3, size=48, fg_fraction=(0.04, 0.08))
    folder = write_raw_dataset(env["nnUNet_raw"], DATASET, "Phantom", cases[:8], cases[8:])
    run_nnunet([_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET), "-c", "2d", "-np", "1", "-npfp", "1",
                "--verify_dataset_integrity"], env)
    return root, env, folder


def _train_and_predict(workspace, trainer: str, tmp_path) -> dict:
    root, env, folder = workspace
    run_nnunet([_bin("nnUNetv2_train"), str(DATASET), "2d", "0", "-tr", trainer, "-device", "cpu"], env,
               augmentation_workers=0)
    results = os.path.join(env["nnUNet_results"], f"Dataset{DATASET:03d}_Phantom", f"{trainer}__nnUNetPlans__2d",
                           "fold_0")
    checkpoint = torch.load(os.path.join(results, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    out = str(tmp_path / "pred")
    run_nnunet([_bin("nnUNetv2_predict"), "-i", os.path.join(folder, "imagesTs"), "-o", out, "-d", str(DATASET),
                "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
               env)
    return {"checkpoint": checkpoint, "pred": out, "folder": folder}


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["nnUNetTrainerUnifiedFocal", "nnUNetTrainerUnifiedFocalSAS"])
def test_trainer_trains_and_predicts_with_the_inputs_geometry(workspace, trainer, tmp_path):
    run = _train_and_predict(workspace, trainer, tmp_path)
    losses = run["checkpoint"]["logging"]["train_losses"]
    assert len(losses) == BUDGET["epochs"]
    assert losses[-1] < losses[0] - 0.01, f"training loss did not go down: {losses}"
    if trainer.endswith("SAS"):
        keys = [k for k in run["checkpoint"]["network_weights"] if "skip_attention" in k]
        assert keys, "the SAS checkpoint holds no attention gate weights"
    images = sorted(os.listdir(os.path.join(run["folder"], "imagesTs")))
    assert len(images) == 2
    for name in images:
        src = nib.load(os.path.join(run["folder"], "imagesTs", name))
        pred = nib.load(os.path.join(run["pred"], name.replace("_0000", "")))
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


def _trainer(workspace, cls):
    """A trainer of ``cls`` on the workspace's plans, initialised on the CPU."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: F401

    root, env, folder = workspace
    pre = os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASET:03d}_Phantom")
    with open(os.path.join(pre, "nnUNetPlans.json")) as fh:
        plans = json.load(fh)
    with open(os.path.join(pre, "dataset.json")) as fh:
        dataset_json = json.load(fh)
    plans["continue_training"] = False  # nnU-Net's run_training sets it before building a trainer
    trainer = cls(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    return trainer, plans


def _batch(trainer, plans, num_classes: int = 2, ignore: int | None = None):
    patch = plans["configurations"]["2d"]["patch_size"]
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(2, 1, *patch, generator=generator)
    target = torch.randint(0, num_classes, (2, 1, *patch), generator=generator).float()
    if ignore is not None:
        target[:, :, : patch[0] // 4] = ignore
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [max(1, round(p * s)) for p, s in zip(patch, scale)]
        targets.append(torch.nn.functional.interpolate(target, size=size, mode="nearest"))
    return {"data": data, "target": targets}


@pytest.fixture
def monkey_env(workspace, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, workspace[1][key])
    return workspace


def test_one_training_step_runs_the_fused_ops(monkey_env):
    """Every deep-supervision output with a weight is one unimri::unified_focal_loss call; every
    decoder stage gates its skip with the fused attention ops, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    from unimri.integrations.nnunet.trainers import nnUNetTrainerUnifiedFocalSAS
    from unimri_kernels.dispatch import backend_for

    trainer, plans = _trainer(monkey_env, nnUNetTrainerUnifiedFocalSAS)
    batch = _batch(trainer, plans)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step(batch)
    # The profiler names the C++ kernels (unimri::<op>_cpu) that ran.
    calls = [e.name.split("::")[1] for e in prof.events() if e.name.startswith("unimri::")]
    outputs = int(sum(w != 0 for w in trainer.loss.weight_factors))
    stages = len(trainer.network.decoder.stages)
    assert calls.count("unified_focal_loss_cpu_state") == outputs, calls
    assert calls.count("unified_focal_loss_cpu_finish") == outputs, calls
    gate_forward = [c for c in calls if c.startswith("attention_gates") and "backward" not in c]
    gate_backward = [c for c in calls if c.startswith("attention_gates") and "backward" in c]
    assert len(gate_forward) == stages and len(gate_backward) == stages, calls
    assert backend_for(torch.zeros(1)) == "cpp", "the C++ kernels are not loaded: the reference runs instead"


def test_loss_matches_nnunet_deep_supervision_weights_and_ignores_the_ignore_label(monkey_env):
    from unimri.integrations.nnunet.trainers import deep_supervision_weights, nnUNetTrainerUnifiedFocal
    from unimri.losses import UnifiedFocalLoss

    trainer, plans = _trainer(monkey_env, nnUNetTrainerUnifiedFocal)
    n = len(trainer._get_deep_supervision_scales())
    want = np.array([1 / 2**i for i in range(n)])
    want[-1] = 0
    np.testing.assert_allclose(trainer.loss.weight_factors, want / want.sum(), rtol=1e-12)
    np.testing.assert_allclose(deep_supervision_weights(n), want / want.sum(), rtol=1e-12)
    # Ignore label: pixels carrying it change nothing, whatever the logits there.
    base = UnifiedFocalLoss(ignore_index=2)
    logits = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 2, (2, 1, 16, 16), generator=torch.Generator().manual_seed(2)).float()
    target[:, :, :4] = 2
    changed = logits.clone()
    changed[:, :, :4] = 50 * torch.randn_like(changed[:, :, :4])
    torch.testing.assert_close(base(changed, target), base(logits, target), rtol=1e-6, atol=1e-7)


def test_region_based_training_is_refused(monkey_env, tmp_path):
    from unimri.integrations.nnunet.trainers import nnUNetTrainerUnifiedFocal

    root, env, folder = monkey_env
    pre = os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASET:03d}_Phantom")
    with open(os.path.join(pre, "nnUNetPlans.json")) as fh:
        plans = json.load(fh)
    dataset_json = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
                    "regions_class_order": [1, 2], "numTraining": 8, "file_ending": ".nii.gz"}
    plans["continue_training"] = False
    trainer = nnUNetTrainerUnifiedFocal(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="region-based training"):
        trainer.initialize()


@pytest.mark.parametrize("dims", [2, 3])
def test_sas_gates_fit_every_level_of_planned_unets(dims):
    """PlainConvUNet and ResidualEncoderUNet, 2D and 3D, anisotropic first stride: gated
    networks keep the output shapes and their state dict loads into a fresh gated build."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    from unimri.integrations.nnunet.sas import add_sas_gates

    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if dims == 3 else torch.nn.InstanceNorm2d
    strides = [[1] * dims, [1] + [2] * (dims - 1), [2] * dims, [2] * dims]
    common = dict(input_channels=1, n_stages=4, features_per_stage=[4, 8, 16, 16], conv_op=conv,
                  kernel_sizes=[[3] * dims] * 4, strides=strides, num_classes=3, norm_op=norm,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=True)
    shape = (1, 1) + ((8, 16, 16) if dims == 3 else (16, 16))
    x = torch.randn(*shape)
    for cls, extra in ((PlainConvUNet, {"n_conv_per_stage": 2, "n_conv_per_stage_decoder": 2}),
                       (ResidualEncoderUNet, {"n_blocks_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": 1})):
        torch.manual_seed(0)
        plain = cls(**common, **extra)
        want = [o.shape for o in plain(x)]
        gated = add_sas_gates(cls(**common, **extra))
        got = gated(x)
        assert [o.shape for o in got] == want
        assert len(gated.decoder.skip_attention) == 3
        again = add_sas_gates(cls(**common, **extra))
        again.load_state_dict(gated.state_dict())
        gated.eval(), again.eval()
        torch.testing.assert_close(again(x)[0], gated(x)[0])
        with pytest.raises(ValueError, match="UNetDecoder"):
            add_sas_gates(torch.nn.Conv2d(1, 1, 1))


def test_nnunet_path_command_names_the_trainer_folder(capsys):
    from unimri.cli import main

    assert main(["nnunet-path", "--check"]) == 0
    folder, names = capsys.readouterr().out.splitlines()
    assert os.path.isfile(os.path.join(folder, "unimri_nnunet_trainers.py"))
    assert "nnUNetTrainerUnifiedFocalSAS" in names
    assert shutil.which("nnUNetv2_train") or os.path.exists(_bin("nnUNetv2_train"))
