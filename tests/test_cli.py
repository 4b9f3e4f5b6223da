"""The unimri command: train/evaluate/predict/ablate round trips and clear errors on bad input."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import LazyModule, needs
import torch

from unimri.cli import main
from unimri.train.checkpoint import load_checkpoint, save_checkpoint

nib = LazyModule("nibabel")

DATA = ["--dataset", "phantom", "--dataset-kwargs", json.dumps({"num_cases": 4, "size": 32})]
FAST = ["--model", "unet", "--features", "4", *DATA, "--stages", "16,32", "--batch-size", "2",
        "--epochs", "1", "--lr", "0.05", "--folds", "2", "--fold", "0", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A tiny trained 2D run folder (CLI train)."""
    out = str(tmp_path_factory.mktemp("cli") / "run")
    torch.set_num_threads(1)
    assert main(["train", *FAST, "--out", out]) == 0
    return out


def _nifti(path: str, shape=(24, 20, 5)) -> np.ndarray:
    affine = np.array([[0.8, 0, 0, -10.0], [0, 0.9, 0.1, 4.0], [0, 0, 2.5, 7.5], [0, 0, 0, 1]])
    data = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), path)
    return affine


def test_train_writes_a_run_folder_and_prints_the_table(trained, capsys):
    assert os.path.isfile(os.path.join(trained, "fold0", "model.pt"))
    rows = list(csv.reader(open(os.path.join(trained, "metrics.csv"))))
    assert rows[0] == ["fold", "IoU", "DSC", "Precision", "Recall"] and [r[0] for r in rows[1:]] == ["0", "mean", "std"]


def test_predict_keeps_input_shape_and_affine(trained, tmp_path, capsys):
    src = str(tmp_path / "scan.nii.gz")
    affine = _nifti(src)
    dst = str(tmp_path / "seg.nii.gz")
    ckpt = os.path.join(trained, "fold0", "model.pt")
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--device", "cpu",
                 "--no-progress"]) == 0
    seg = nib.load(dst)
    assert seg.shape == (24, 20, 5)
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    # an existing output is refused without --overwrite, and left untouched
    before = os.path.getmtime(dst)
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err and os.path.getmtime(dst) == before
    # a folder in -> a folder of <name>_seg<the input's suffix> out
    folder = tmp_path / "in"
    folder.mkdir()
    _nifti(str(folder / "a.nii.gz"), (16, 12, 3))
    _nifti(str(folder / "b.nii"), (10, 18, 2))
    assert main(["predict", "--checkpoint", ckpt, "--input", str(folder), "--output",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a_seg.nii.gz", "b_seg.nii"]
    assert nib.load(str(tmp_path / "out" / "b_seg.nii")).shape == (10, 18, 2)


def test_predict_3d_model_uses_a_sliding_window(tmp_path):
    from unimri.models import create_model
    from unimri.infer.predict import InferenceSpec, predict_path

    spec = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "num_classes": 2, "features": 4}}
    model = create_model("unet", **spec["kwargs"])
    inference = InferenceSpec(3, (16, 16, 16), 2, 1, patch=(16, 16, 8), modality="MR")
    ckpt = str(tmp_path / "m3d.pt")
    save_checkpoint(ckpt, {"model_spec": spec, "inference": inference.to_dict(), "model": model.state_dict()})
    src = str(tmp_path / "vol.nii.gz")
    affine = _nifti(src, (20, 18, 11))
    out = predict_path(ckpt, src, str(tmp_path / "vol_seg.nii"), progress=False)
    seg = nib.load(out[0])
    assert seg.shape == (20, 18, 11)
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)


def test_evaluate_prints_metric_table_and_refuses_another_model(trained, tmp_path, capsys):
    ckpt = os.path.join(trained, "fold0", "model.pt")
    out = str(tmp_path / "eval.json")
    assert main(["evaluate", "--checkpoint", ckpt, "--device", "cpu", "--no-progress", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "| **mean** |" in text and "lesion" in text
    numbers = json.load(open(out))
    assert len(numbers["per_case"]) == 4 and 0 <= numbers["summary"]["DSC"] <= 1
    assert main(["evaluate", "--checkpoint", ckpt, "--model", "fcn", "--no-progress"]) == 2
    assert "made for model 'unet', not 'fcn'" in capsys.readouterr().err


def test_ablate_writes_paper_tables(tmp_path, capsys):
    out = str(tmp_path / "abl")
    assert main(["ablate", "--study", "components", "--models", "unet", *FAST, "--out", out]) == 0
    md = open(os.path.join(out, "components.md")).read()
    for variant in ("baseline", "+ SAS", "+ unified loss", "+ progressive resizing", "SAS + unified loss",
                    "SAS + resizing", "unified loss + resizing", "all (unified approach)"):
        assert f"| {variant} |" in md
    assert ("| Model | Strategy | test IoU | test DSC | test Precision | test Recall | "
            "Δ test DSC vs baseline [95 % CI] | p (Holm) |") in md and "±" in md
    rows = list(csv.DictReader(open(os.path.join(out, "components.csv"))))
    assert len(rows) == 8 and {r["fold"] for r in rows} == {"0"} and {r["split"] for r in rows} == {"test"}
    assert os.path.isfile(os.path.join(out, "curves_unet.png"))
    # the baseline and "+ SAS" really ran one stage at the final size; the others two stages
    cfg = json.load(open(os.path.join(out, "unet-baseline", "config.json")))
    assert cfg["stages"] == [32] and cfg["loss"] == "ce" and cfg["attention"] is None
    cfg = json.load(open(os.path.join(out, "unet-all_unified_approach", "config.json")))
    assert cfg["stages"] == [16, 32] and cfg["loss"] == "unified" and cfg["attention"] == "sas"


@pytest.mark.parametrize("flags, message", [
    (["--model", "unet3000"], "model: unknown model 'unet3000'"),
    (["--loss", "hinge"], "loss: unknown loss 'hinge'"),
    (["--dataset", "brats2099"], "dataset: 'brats2099' is neither a built-in dataset"),
    (["--attention", "psychic"], "attention: unknown attention"),
    (["--stages", "16,0"], "stages[1]: expected 2 positive sizes, got 0"),
    (["--stages", "32x32x32"], "expected 2 positive sizes"),
    (["--dataset-kwargs", "{oops"], "--dataset-kwargs: could not parse"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    assert main(["train", *FAST, *flags, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_folder_is_refused_unless_overwrite(trained, tmp_path, capsys):
    assert main(["train", *FAST, "--out", trained]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(trained, "fold0", "model.pt"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["train", *FAST, "--out", str(foreign), "--overwrite"]) == 2
    assert "not a unimri run folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_resume_with_a_checkpoint_of_another_model_is_refused(trained, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", *FAST, "--epochs", "1,2", "--stop-after-epochs", "1", "--out", run]) == 3
    assert "continue with --resume" in capsys.readouterr().err
    # swap the saved state for one made for another backbone
    state = load_checkpoint(os.path.join(run, "fold0", "last.pt"))
    state["model_spec"] = {**state["model_spec"], "name": "segnet"}
    save_checkpoint(os.path.join(run, "fold0", "last.pt"), state)
    assert main(["train", "--resume", run, "--no-progress"]) == 2
    assert "checkpoint was made for another model (name 'segnet' != 'unet')" in capsys.readouterr().err


def test_help_and_datasets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--stages" in text and "--resume" in text and "paper's protocol" in text
    assert main(["datasets"]) == 0
    assert "phantom" in capsys.readouterr().out


def test_config_file_with_flag_overrides(tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text("model: unet\nfeatures: 4\nloss: focal\ndataset: phantom\n"
                        "dataset_kwargs: {num_cases: 4, size: 32}\nstages: [16, 32]\nbatch_size: [2, 2]\n"
                        "epochs: 3\nlr: 0.05\nfolds: 2\nfold_indices: [0]\ndevice: cpu\nprogress: false\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--epochs", "1", "--loss", "tversky", "--out", str(out)]) == 0
    saved = json.load(open(out / "config.json"))
    assert (saved["loss"], saved["epochs"], saved["features"], saved["stages"]) == ("tversky", 1, 4, [16, 32])
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_ablate_all_resume_continues_started_studies_and_starts_the_rest(tmp_path, monkeypatch, capsys):
    """An interrupted ``--study all`` stopped inside its first study: --resume continues that
    one and starts the studies that had not begun."""
    from unimri.studies import ablation
    from unimri.train.experiment import MARKER

    out = tmp_path / "abl"
    (out / "components").mkdir(parents=True)
    (out / "components" / MARKER).write_text("{}")
    (out / MARKER).write_text("{}")
    calls = []

    def fake_run_study(cfg, study, models, out_dir, *, resume, **kw):
        calls.append((study, resume))
        os.makedirs(out_dir, exist_ok=True)
        open(os.path.join(out_dir, f"{study}.md"), "w").write(f"## {study}\n")

    monkeypatch.setattr(ablation, "run_study", fake_run_study)
    assert main(["ablate", "--study", "all", "--models", "unet", *FAST, "--out", str(out), "--resume"]) == 0
    assert calls == [("components", True), ("loss", False), ("attention", False)]
    calls.clear()
    assert main(["ablate", "--study", "loss", "--models", "unet", *FAST, "--out", str(tmp_path / "new"),
                 "--resume"]) == 0  # a single study keeps its own resume check (the fake skips it)
    assert calls == [("loss", True)]
