"""End-to-end training on the built-in phantom: learning, exact resume, two-process gloo DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import unimri
import unimri_kernels
from unimri.train import TrainConfig, TrainingInterrupted, run_experiment
from unimri.train.checkpoint import load_checkpoint
from unimri.train.runlog import read_jsonl

# a small, easy phantom (8-15 % lesion area at 32x32) so that a few CPU epochs learn
PHANTOM = {"num_cases": 6, "size": 32, "fg_fraction": [0.08, 0.15]}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**changes) -> TrainConfig:
    base = dict(model="unet", features=4, loss="unified", dataset="phantom", dataset_kwargs=PHANTOM,
                stages=[16, 32], batch_size=2, epochs=[1, 2], patience=5, lr=0.05, folds=2,
                fold_indices=[0], progress=False, device="cpu")
    return TrainConfig(**{**base, **changes})


def test_short_run_reduces_loss_and_beats_all_background(tmp_path):
    # 16 cases, 2 outer folds: 8 test cases, 6 to train on and 2 to stop on
    cfg = tiny(attention="sas", dataset_kwargs={**PHANTOM, "num_cases": 16}, epochs=[2, 8], lr=0.1,
               patience=10)
    result = run_experiment(cfg, str(tmp_path / "run"))
    losses = [h["train_loss"] for h in result.histories]
    assert len(losses) == 10 and [h["size"] for h in result.histories] == [[16, 16]] * 2 + [[32, 32]] * 8
    assert losses[-1] < 0.8 * losses[0], losses
    # an all-background predictor scores DSC = IoU = recall = 0 on every lesion case
    fold = result.folds[0]
    assert fold["DSC"] > 0.2 and fold["Recall"] > 0.2, fold
    for name in ("config.json", "folds.json", "log.jsonl", "metrics.csv", "metrics.md", "curves.png",
                 "overlays.png", "fold0/model.pt", "fold0/last.pt", "fold0/best.pt"):
        assert os.path.isfile(tmp_path / "run" / name), name
    records = read_jsonl(str(tmp_path / "run" / "log.jsonl"))
    assert [r["event"] for r in records] == ["epoch"] * 10 + ["fold"]
    assert not [f for f in os.listdir(tmp_path / "run") if f.startswith(".tmp")]


def _epochs(path: str) -> list[tuple]:
    return [(r["fold"], r["epoch"], r["train_loss"], r["val_loss"], r["val_dsc"])
            for r in read_jsonl(path) if r["event"] == "epoch"]


def test_resume_after_kill_gives_identical_weights(tmp_path):
    cfg = tiny(fold_indices=[0, 1])  # two folds x (1 + 2) epochs
    full = run_experiment(cfg, str(tmp_path / "full"))
    cut = str(tmp_path / "cut")
    with pytest.raises(TrainingInterrupted):  # killed in fold 0, stage 0 -> 1 boundary
        run_experiment(cfg.replace(stop_after_epochs=1), cut)
    with pytest.raises(TrainingInterrupted):  # killed in fold 1, mid stage 1
        run_experiment(cfg.replace(stop_after_epochs=3), cut, resume=True)
    state = load_checkpoint(os.path.join(cut, "fold1", "last.pt"))
    assert (state["fold"], state["stage"], state["next_epoch"]) == (1, 0, 1)
    resumed = run_experiment(cfg, cut, resume=True)
    for fold in (0, 1):
        a = load_checkpoint(str(tmp_path / "full" / f"fold{fold}" / "model.pt"))["model"]
        b = load_checkpoint(os.path.join(cut, f"fold{fold}", "model.pt"))["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"fold {fold}: {key} differs after resume"
    assert _epochs(str(tmp_path / "full" / "log.jsonl")) == _epochs(os.path.join(cut, "log.jsonl"))
    assert resumed.folds == full.folds


def test_resume_refuses_a_changed_configuration(tmp_path):
    cfg = tiny(epochs=[1, 1])
    with pytest.raises(TrainingInterrupted):
        run_experiment(cfg.replace(stop_after_epochs=1), str(tmp_path / "r"))
    with pytest.raises(ValueError, match="configuration differs"):
        run_experiment(cfg.replace(lr=0.1), str(tmp_path / "r"), resume=True)


def _env() -> dict[str, str]:
    roots = [os.path.dirname(os.path.dirname(unimri.__file__)),
             os.path.dirname(os.path.dirname(unimri_kernels.__file__))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(roots + [os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def test_two_process_gloo_matches_single_process(tmp_path):
    args = ["train", "--model", "unet", "--features", "4", "--norm", "group", "--loss", "unified",
            "--dataset", "phantom", "--dataset-kwargs", json.dumps({**PHANTOM, "num_cases": 10}),
            "--stages", "16,32", "--batch-size", "4", "--epochs", "1,2", "--lr", "0.05",
            "--folds", "2", "--fold", "0", "--device", "cpu", "--no-progress"]
    single = tmp_path / "single"
    from unimri.cli import main

    assert main(args + ["--out", str(single)]) == 0
    double = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "unimri", *args, "--out", str(double)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _epochs(str(single / "log.jsonl")), _epochs(str(double / "log.jsonl"))
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert ra[:2] == rb[:2]
        assert ra[2] == pytest.approx(rb[2], rel=1e-3, abs=1e-5)  # train loss
        assert ra[3] == pytest.approx(rb[3], rel=1e-3, abs=1e-5)  # val loss (all-reduced)
        assert ra[4] == pytest.approx(rb[4], abs=2e-2)  # val DSC from all-reduced counts
    ma = json.load(open(single / "results.json"))["folds"][0]
    mb = json.load(open(double / "results.json"))["folds"][0]
    for key in ("IoU", "DSC", "Precision", "Recall"):
        assert ma[key] == pytest.approx(mb[key], abs=2e-2), key


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_3d_training_with_patches_and_sliding_window_evaluation(tmp_path):
    cfg = tiny(spatial_dims=3, attention="sas", patch_size=12, epochs=1, stages=[8, 16],
               dataset_kwargs={"num_cases": 4, "spatial_dims": 3, "size": 16})
    result = run_experiment(cfg, str(tmp_path / "run3d"))
    assert [h["size"] for h in result.histories] == [[8, 8, 8], [16, 16, 16]]
    state = load_checkpoint(str(tmp_path / "run3d" / "fold0" / "model.pt"))
    assert state["inference"]["patch"] == [12, 12, 12] and state["inference"]["size"] == [16, 16, 16]
    # the reported fold DSC is the mean over the test cases of 2TP/(2TP+FP+FN), recomputed here
    # from the saved model's sliding-window prediction of each whole test volume
    from unimri.infer.predict import load_trained_model
    from unimri.runtime.inference import predict_labels
    from unimri.runtime.scoring import normalized_image
    from unimri.train.experiment import load_experiment_cases

    model, spec, _ = load_trained_model(str(tmp_path / "run3d" / "fold0" / "model.pt"))
    test_ids = json.load(open(tmp_path / "run3d" / "folds.json"))["folds"][0]["test"]
    cases = {c.case_id: c for c in load_experiment_cases(cfg)}
    dscs = []
    for case_id in test_ids:
        case = cases[case_id]
        pred = predict_labels(model, normalized_image(case, spec.normalize), spec).numpy()
        assert pred.shape == case.label.shape
        tp = float(((pred == 1) & (case.label == 1)).sum())
        fp, fn = float(((pred == 1) & (case.label != 1)).sum()), float(((pred != 1) & (case.label == 1)).sum())
        dscs.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    assert result.folds[0]["DSC"] == pytest.approx(sum(dscs) / len(dscs), abs=1e-6)
    assert result.folds[0]["Recall"] > 0
