"""A new user's day one on their own scans: NRRD/NIfTI/MHA folders, NaN voxels, 4D files,
folder predict, output formats, ``datasets PATH``, ``evaluate --pred/--labels``,
non-square slices, named attention modules and the command's error reporting.

Every file is written by the test; models are tiny and trained for one epoch.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from unimri.cli import is_user_error, main
from unimri.train.checkpoint import load_checkpoint, save_checkpoint

# An oblique LPS direction (rotation about z by 20 degrees), anisotropic spacing, an origin.
_C, _S = math.cos(math.radians(20)), math.sin(math.radians(20))
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-12.5, 30.25, 4.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _sitk():
    return pytest.importorskip("SimpleITK")


def _write_itk(path: str, xyz: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION,
               vector: bool = False) -> None:
    """Write an (X, Y, Z[, T]) array with SimpleITK (independently of unimri's writer); a 4D
    array as a 4D image, or with ``vector`` as a 3D image of T-component pixels."""
    sitk = _sitk()
    if vector:
        img = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0, 3)), isVector=True)
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(tuple(range(xyz.ndim - 1, -1, -1)))),
                                     isVector=False)
    if xyz.ndim == 4 and not vector:
        spacing, origin = tuple(spacing) + (1.0,), tuple(origin) + (0.0,)
        d = np.eye(4)
        d[:3, :3] = np.asarray(direction).reshape(3, 3)
        direction = tuple(d.ravel())
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, path)


def _scan(shape=(16, 12, 4), seed=0, lesion=True) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like image (positive intensities) with a bright blob and its label."""
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 30, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    if lesion:
        label[5:9, 4:7, 1:3] = 1
        image[label == 1] += 400
    return image, label


def _checkpoint(path: str, in_channels=1, spatial_dims=2, size=(16, 16), intensity=None,
                keep_aspect=True) -> str:
    """An untrained tiny UNet saved as unimri train would (enough for predict's plumbing)."""
    from unimri.models import create_model
    from unimri.infer.predict import InferenceSpec

    kwargs = {"spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": 2, "features": 4,
              "depth": 2}
    model = create_model("unet", **kwargs)
    spec = InferenceSpec(spatial_dims, size, 2, in_channels, modality="MR", keep_aspect=keep_aspect,
                         intensity=intensity)
    save_checkpoint(path, {"model_spec": {"name": "unet", "kwargs": kwargs}, "inference": spec.to_dict(),
                           "model": model.state_dict()})
    return path


def _geometry(path: str) -> tuple:
    sitk = _sitk()
    img = sitk.ReadImage(path)
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _assert_same_geometry(a: tuple, b: tuple, dims: int = 3) -> None:
    assert tuple(a[0][:dims]) == tuple(b[0][:dims])
    for got, want in zip(a[1:], b[1:]):
        got, want = np.asarray(got, float), np.asarray(want, float)
        if got.size != want.size:  # a 4D input's direction: compare its 3D block
            n = int(round(math.sqrt(want.size))) if want.size in (9, 16) else want.size
            want = want.reshape(n, n)[:dims, :dims].ravel() if want.size in (9, 16) else want[:dims]
        np.testing.assert_allclose(got, want, atol=1e-4)


def _nnunet(folder, n=4, ending=".nrrd", nan_case=None) -> str:
    """An nnU-Net raw folder with ``n`` small MR cases stored as ``ending``."""
    os.makedirs(folder / "imagesTr")
    os.makedirs(folder / "labelsTr")
    json.dump({"channel_names": {"0": "T2"}, "labels": {"background": 0, "lesion": 1},
               "file_ending": ending, "numTraining": n}, open(folder / "dataset.json", "w"))
    for i in range(n):
        image, label = _scan(seed=i)
        if i == nan_case:
            image[0, 0, :] = np.nan
        _write_itk(str(folder / "imagesTr" / f"case{i}_0000{ending}"), image)
        _write_itk(str(folder / "labelsTr" / f"case{i}{ending}"), label)
    return str(folder)


TRAIN = ["--model", "unet", "--features", "4", "--model-kwargs", '{"depth": 2}', "--stages", "16",
         "--batch-size", "2", "--epochs", "1", "--folds", "2", "--fold", "0", "--device", "cpu",
         "--no-progress", "--lr", "0.01"]


# ---------------------------------------------------------------------------- 1. NaN voxels
def test_nan_voxels_are_refused_by_train_and_datasets_counts_them(tmp_path, capsys):
    data = _nnunet(tmp_path / "Dataset001_Nan", nan_case=2)
    nan_file = os.path.join(data, "imagesTr", "case2_0000.nrrd")
    assert main(["datasets", data]) == 0
    captured = capsys.readouterr()
    assert "nnunet layout, 4 case(s)" in captured.out
    row = next(line for line in captured.out.splitlines() if line.startswith("| case2 "))
    assert row.rstrip().endswith("| 4 |")  # 4 NaN voxels reported, not hidden
    assert "case2" in captured.err and "--replace-nonfinite" in captured.err
    out = str(tmp_path / "run")
    assert main(["train", *TRAIN, "--dataset", data, "--out", out]) == 2
    err = capsys.readouterr().err
    assert nan_file in err and "4 of" in err and "not finite" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(out)  # refused before the run folder was made
    # the explicit option replaces them; the checkpoint then records the intensity profile
    assert main(["train", *TRAIN, "--dataset", data, "--out", out, "--replace-nonfinite", "0"]) == 0
    state = load_checkpoint(os.path.join(out, "fold0", "model.pt"))
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    profile = state["inference"]["intensity"]
    assert profile["modality"] == "MR" and profile["masked"] is True
    p1, p50, p99 = profile["percentiles"][0]
    assert 150 < p1 < p50 < p99 < 800
    assert state["inference"]["keep_aspect"] is True


def test_predict_refuses_nan_input_unless_replaced(tmp_path, capsys):
    ckpt = _checkpoint(str(tmp_path / "m.pt"))
    image, _ = _scan()
    image[3, 3, 3] = np.inf
    src = str(tmp_path / "scan.nrrd")
    _write_itk(src, image)
    dst = str(tmp_path / "seg.nrrd")
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert src in err and "1 of" in err and not os.path.exists(dst)
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--no-progress",
                 "--replace-nonfinite", "0"]) == 0
    assert os.path.isfile(dst)


def test_training_stops_at_the_first_nonfinite_loss_without_writing_weights(tmp_path):
    from unimri.data import Volume
    from unimri.train.config import TrainConfig
    from unimri.train.engine import NonFiniteLossError
    from unimri.train.experiment import run_experiment

    cases = []
    for i in range(4):
        image, label = _scan(seed=i)
        image = image[..., 1]
        image[0, 0] = np.nan  # in every case, so the very first batch meets it
        cases.append(Volume(image[None], label[..., 1], np.eye(4), (1.0, 1.0), f"c{i}"))
    cfg = TrainConfig(model="unet", features=4, model_kwargs={"depth": 2}, stages=[16], batch_size=2,
                      epochs=2, folds=2, fold_indices=[0], device="cpu", progress=False)
    out = str(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="training loss .* is nan .*no weights of this epoch"):
        run_experiment(cfg, out, cases=cases)
    assert not [f for f in os.listdir(os.path.join(out, "fold0")) if f.endswith(".pt")]


def test_on_nonfinite_end_keeps_the_best_epoch_and_marks_the_fold_diverged(tmp_path, monkeypatch):
    """A study's run whose loss diverges at its second epoch ends there with the first epoch's
    (best) weights, is scored on its test cases, and is marked diverged in result.json, the
    results row and the rendered table."""
    from unimri.data import Volume
    from unimri.studies.quality import fold_row, make_record, render_table
    from unimri.train.config import TrainConfig
    from unimri.train.engine import FoldTrainer, NonFiniteLossError
    from unimri.train.experiment import run_experiment

    real_epoch = FoldTrainer._train_epoch
    calls = []

    def diverge_at_second_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise NonFiniteLossError("training stopped: the training loss is nan (test)")
        return real_epoch(self, *args, **kwargs)

    monkeypatch.setattr(FoldTrainer, "_train_epoch", diverge_at_second_epoch)
    cases = [Volume(img[None, ..., 1], lab[..., 1], np.eye(4), (1.0, 1.0), f"c{i}")
             for i, (img, lab) in enumerate(_scan(seed=i) for i in range(6))]
    cfg = TrainConfig(model="unet", features=4, model_kwargs={"depth": 2}, stages=[16, 16], batch_size=2,
                      epochs=3, folds=2, fold_indices=[0], device="cpu", progress=False)
    with pytest.raises(NonFiniteLossError):  # the default stops the run
        run_experiment(cfg, str(tmp_path / "error"), cases=cases)
    calls.clear()
    out = str(tmp_path / "end")
    result = run_experiment(cfg.replace(on_nonfinite="end"), out, cases=cases)
    assert len(calls) == 2  # no further epoch and no second stage
    fold = result.folds[0]
    assert fold["diverged"]["stage"] == 0 and fold["diverged"]["stage_epoch"] == 1
    assert fold["diverged"]["kept"] == "best" and 0.0 <= fold["DSC"] <= 1.0
    best, final = (load_checkpoint(os.path.join(out, "fold0", f"{k}.pt"))["model"] for k in ("best", "model"))
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert json.load(open(os.path.join(out, "fold0", "result.json")))["metrics"]["diverged"]["epoch"] == 1
    row = fold_row("UNet", "baseline", 0, fold)
    assert row["diverged"] is True and "diverged" not in fold_row("UNet", "x", 0, {**fold, "diverged": None})
    table = render_table(make_record("s", "d", "Model", "Method", [row], {"folds": 2}, {}))
    assert "Diverged (1 of 1 fold runs" in table and "UNet / baseline, seed 0, fold 0" in table
    with pytest.raises(ValueError, match="on_nonfinite: expected one of"):
        cfg.replace(on_nonfinite="ignore").validate()


# ---------------------------------------------------------------------------- 2. 4D NRRD
@pytest.mark.parametrize("vector", [False, True], ids=["4d-image", "vector-pixels"])
def test_4d_nrrd_keeps_the_3d_geometry_like_4d_nifti(tmp_path, vector):
    nib = pytest.importorskip("nibabel")
    from unimri.data import read_image

    data = np.random.default_rng(1).normal(size=(6, 5, 4, 2)).astype(np.float32)
    nrrd = str(tmp_path / "two.nrrd")
    _write_itk(nrrd, data, vector=vector)
    array, affine, spacing, meta = read_image(nrrd)
    assert array.shape == (6, 5, 4, 2) and np.array_equal(array, data)
    assert spacing == pytest.approx(SPACING) and meta["orientation"] == "LPS"
    assert abs(np.linalg.det(affine[:3, :3])) > 0 and np.array_equal(affine[3], [0, 0, 0, 1])
    nifti = str(tmp_path / "two.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), nifti)
    array_n, affine_n, spacing_n, meta_n = read_image(nifti)
    np.testing.assert_allclose(affine, affine_n, atol=1e-5)
    assert spacing_n == pytest.approx(spacing) and meta_n["orientation"] == meta["orientation"]


def test_predict_on_4d_nrrd_writes_3d_labels_with_the_input_geometry(tmp_path):
    from unimri.infer.predict import predict_path

    ckpt = _checkpoint(str(tmp_path / "m2.pt"), in_channels=2)
    src = str(tmp_path / "mc.nrrd")
    _write_itk(src, np.random.default_rng(2).normal(300, 30, (14, 10, 3, 2)).astype(np.float32))
    dst = str(tmp_path / "mc_seg.nii.gz")
    assert predict_path(ckpt, src, dst, progress=False) == [dst]
    _assert_same_geometry(_geometry(dst), _geometry(src))


# ---------------------------------------------------------------------------- 3. folder predict
def test_folder_predict_checks_everything_first_and_skips_label_files(tmp_path, capsys):
    ckpt = _checkpoint(str(tmp_path / "m.pt"))
    folder = tmp_path / "scans"
    folder.mkdir()
    for name, seed in (("a.nrrd", 0), ("b.mha", 1), ("a_label.nrrd", 2), ("b_mask.mha", 3), ("x_gt.nrrd", 4)):
        _write_itk(str(folder / name), _scan(seed=seed)[0])
    (folder / "notes.txt").write_text("scanner notes")
    good = open(folder / "a.nrrd", "rb").read()
    (folder / "c.nrrd").write_bytes(good[: len(good) - 300])  # truncated
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", ckpt, "--input", str(folder), "--no-progress"]
    assert main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "c.nrrd") in err and "truncated or corrupt" in err and "nothing was written" in err
    assert "itk::" not in err.lower() and "ITK ERROR" not in err  # one clear line, no ITK trace
    assert not out.exists()  # the good inputs before it were not written either
    (folder / "c.nrrd").unlink()
    # into the input folder itself, twice: label files and earlier outputs are never segmented
    assert main([*args, "--output", str(folder), "--skip", "*_gt"]) == 0
    first = sorted(os.listdir(folder))
    assert "a_seg.nrrd" in first and "b_seg.mha" in first
    assert not any(n.startswith(("a_label_seg", "b_mask_seg", "x_gt_seg", "notes")) and n != "notes.txt"
                   for n in first)
    assert main([*args, "--output", str(folder), "--skip", "*_gt", "--overwrite"]) == 0
    assert sorted(os.listdir(folder)) == first and not any("_seg_seg" in n for n in first)
    # both outputs exist now: the message counts the others correctly
    assert main([*args, "--output", str(folder), "--skip", "*_gt"]) == 2
    err = capsys.readouterr().err
    assert "already exists (and 1 more)" in err and "and 0 more" not in err


def test_single_existing_output_does_not_say_and_0_more(tmp_path, capsys):
    ckpt = _checkpoint(str(tmp_path / "m.pt"))
    src, dst = str(tmp_path / "s.nrrd"), str(tmp_path / "s_seg.nrrd")
    _write_itk(src, _scan()[0])
    open(dst, "w").close()
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already exists;" in err and "more" not in err


# ---------------------------------------------------------------------------- 4. output formats
@pytest.mark.parametrize("src_suffix,dst_suffix", [(".nrrd", ".nrrd"), (".nrrd", ".nii.gz"), (".nii", ".mha"),
                                                   (".mha", ".nii")])
def test_predict_output_format_follows_the_suffix_with_identical_geometry(tmp_path, src_suffix, dst_suffix):
    if ".nii" in src_suffix + dst_suffix:
        pytest.importorskip("nibabel")
    from unimri.infer.predict import predict_path

    ckpt = _checkpoint(str(tmp_path / "m.pt"))
    src = str(tmp_path / f"scan{src_suffix}")
    _write_itk(src, _scan(shape=(15, 11, 3))[0])
    dst = str(tmp_path / f"seg{dst_suffix}")
    predict_path(ckpt, src, dst, progress=False)
    sitk = _sitk()
    img = sitk.ReadImage(dst)
    assert sitk.GetArrayFromImage(img).dtype == np.uint8
    _assert_same_geometry(_geometry(dst), _geometry(src))


def test_folder_predict_default_format_is_the_inputs_and_can_be_chosen(tmp_path):
    from unimri.infer.predict import predict_path

    ckpt = _checkpoint(str(tmp_path / "m.pt"))
    folder = tmp_path / "in"
    folder.mkdir()
    _write_itk(str(folder / "p.mha"), _scan()[0])
    _write_itk(str(folder / "q.nrrd"), _scan(seed=1)[0])
    written = predict_path(ckpt, str(folder), str(tmp_path / "o1"), progress=False)
    assert [os.path.basename(w) for w in written] == ["p_seg.mha", "q_seg.nrrd"]
    written = predict_path(ckpt, str(folder), str(tmp_path / "o2"), progress=False, output_format=".nrrd")
    assert [os.path.basename(w) for w in written] == ["p_seg.nrrd", "q_seg.nrrd"]
    for w in written:
        _assert_same_geometry(_geometry(w), _geometry(str(folder / (os.path.basename(w)[0] + ".mha"
                                                                    if w.endswith("p_seg.nrrd") else "q.nrrd"))))
    with pytest.raises(ValueError, match="output: expected a path ending in"):
        predict_path(ckpt, str(folder / "p.mha"), str(tmp_path / "x.png"), progress=False)


# ---------------------------------------------------------------------------- 5. datasets / evaluate
def test_datasets_path_table_and_nrrd_orientation(tmp_path, capsys):
    from unimri.data import load_cases

    data = _nnunet(tmp_path / "Dataset002_Ok", n=2)
    assert main(["datasets", data]) == 0
    out = capsys.readouterr().out
    assert "| case | shape | spacing | channels | classes | foreground | non-finite |" in out
    assert "| case0 | 16x12x4 | 0.7x0.9x2.5 | 1 | 0,1 | 3.125 % | 0 |" in out  # 24 of 768 voxels
    cases = load_cases(data)
    assert [c.meta["orientation"] for c in cases] == ["LPS", "LPS"]
    assert main(["datasets", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "built-in" not in err and "nnunet" not in err.split("exist")[0]


def test_evaluate_scores_prediction_files_against_labels(tmp_path, capsys):
    labels, preds = tmp_path / "labelsTr", tmp_path / "preds"
    labels.mkdir()
    preds.mkdir()
    truth = np.zeros((10, 8, 4), np.uint8)
    truth[2:4, 2:4, 1:3] = 1  # 8 voxels
    guess = np.zeros_like(truth)
    guess[2:4, 2:4, 1:2] = 1  # 4 of them
    guess[6:8, 5:7, 1:2] = 1  # and 4 false positives
    _write_itk(str(labels / "case1.nrrd"), truth)
    _write_itk(str(labels / "case2.nrrd"), truth)  # no prediction: noted, not scored
    _write_itk(str(preds / "case1_seg.nii.gz"), guess)
    out = str(tmp_path / "scores.json")
    assert main(["evaluate", "--pred", str(preds), "--labels", str(labels), "--out", out, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "| case | IoU | DSC | Precision | Recall | HD95 | ASD |" in captured.out
    assert "case2" in captured.err and "no prediction" in captured.err
    scores = json.load(open(out))
    row = scores["per_case"][0]
    assert row["case_id"] == "case1"
    assert row["DSC"] == pytest.approx(0.5) and row["IoU"] == pytest.approx(4 / 12)
    assert row["Precision"] == pytest.approx(0.5) and row["Recall"] == pytest.approx(0.5)
    assert 0 < row["ASD"] <= row["HD95"] < 10
    assert scores["summary"]["DSC"] == pytest.approx(0.5)
    # a prediction without a label, or of another shape, is refused naming the file
    _write_itk(str(preds / "case3_seg.nrrd"), guess)
    assert main(["evaluate", "--pred", str(preds), "--labels", str(labels), "--no-progress"]) == 2
    assert "case3_seg.nrrd" in capsys.readouterr().err
    os.unlink(preds / "case3_seg.nrrd")
    _write_itk(str(preds / "case2_seg.nrrd"), guess[:9])
    assert main(["evaluate", "--pred", str(preds), "--labels", str(labels), "--no-progress"]) == 2
    assert "case2_seg.nrrd" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 6. non-square stages
def test_stages_keep_the_aspect_ratio_unless_exact():
    from unimri.train.config import TrainConfig
    from unimri.train.datasets import StageCollate
    from unimri.infer.predict import InferenceSpec

    cfg = TrainConfig(stages=[64, "96x128"])
    long_side, exact = cfg.stage_sizes
    assert long_side.keep_aspect and not exact.keep_aspect and tuple(exact) == (96, 128)
    items = [{"image": np.zeros((1, 45, 120), np.float32), "label": np.zeros((45, 120), np.int64)}] * 2
    assert StageCollate(long_side, 2)(items)["image"].shape == (2, 1, 24, 64)
    assert StageCollate(exact, 2)(items)["target"].shape == (2, 2, 96, 128)
    spec = InferenceSpec(2, long_side, 2, 1)
    assert spec.keep_aspect and spec.input_size((45, 120)) == (24, 64)
    old = InferenceSpec.from_dict({"spatial_dims": 2, "size": [64, 64], "num_classes": 2, "in_channels": 1})
    assert not old.keep_aspect and old.input_size((45, 120)) == (64, 64)  # old checkpoints: as trained


# ---------------------------------------------------------------------------- 7. smaller things
def test_intensity_far_from_training_warns(tmp_path):
    from unimri.data import Volume, intensity_profile
    from unimri.infer.predict import predict_path

    mr = [Volume(_scan(seed=i)[0][None], None, np.eye(4), SPACING, f"m{i}", {"modality": "MR"}) for i in range(2)]
    ckpt = _checkpoint(str(tmp_path / "m.pt"), intensity=intensity_profile(mr))
    ct = np.random.default_rng(0).normal(-700, 300, (16, 12, 4)).astype(np.float32)
    _write_itk(str(tmp_path / "ct.nrrd"), ct)
    with pytest.warns(UserWarning, match=r"ct.nrrd.*far outside.*modality MR"):
        predict_path(ckpt, str(tmp_path / "ct.nrrd"), str(tmp_path / "ct_seg.nrrd"), progress=False)
    _write_itk(str(tmp_path / "mr.nrrd"), _scan(seed=5)[0])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        predict_path(ckpt, str(tmp_path / "mr.nrrd"), str(tmp_path / "mr_seg.nrrd"), progress=False)


def test_truncated_nifti_is_one_clear_line(tmp_path):
    nib = pytest.importorskip("nibabel")
    from unimri.data import read_image

    path = str(tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(_scan()[0], np.eye(4)), path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        read_image(path)
    assert path in str(info.value) and "\n" not in str(info.value)


def test_truncated_nrrd_is_one_clear_line(tmp_path, capfd):
    from unimri.data import read_image

    path = str(tmp_path / "t.nrrd")
    _write_itk(path, _scan()[0])
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        read_image(path)
    message = str(info.value)
    assert path in message and "\n" not in message and "truncated or corrupt" in message
    assert "itk" not in capfd.readouterr().err.lower()


def test_attention_modules_are_named_by_position_and_old_checkpoints_load(tmp_path):
    from unimri.models import create_model
    from unimri.infer.predict import load_trained_model

    kwargs = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "features": 4, "attention": "sas"}
    expected = {"unet": "skip_level0", "fcn": "pool4", "rcnn": "encoder_level1", "segnet": "decoder_stage0",
                "deeplabv3": "aspp"}
    for name, position in expected.items():
        keys = create_model(name, **kwargs).state_dict().keys()
        assert any(k.startswith(f"attentions.{position}.") for k in keys), name
        assert not any(k.split(".")[1].isdigit() for k in keys if k.startswith("attentions.")), name
    model = create_model("unet", **kwargs)
    names = list(model.attentions.keys())
    legacy = {}
    for key, value in model.state_dict().items():  # the flat-list keys older checkpoints hold
        for i, n in enumerate(names):
            key = key.replace(f"attentions.{n}.", f"attentions.{i}.")
        legacy[key] = value
    assert any(k.startswith("attentions.0.") for k in legacy)
    path = str(tmp_path / "old.pt")
    save_checkpoint(path, {"model_spec": {"name": "unet", "kwargs": kwargs},
                           "inference": {"spatial_dims": 2, "size": [32, 32], "num_classes": 2, "in_channels": 1},
                           "model": legacy})
    loaded, spec, _ = load_trained_model(path)
    for (k, a), b in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not spec.keep_aspect and spec.intensity is None


def test_main_one_line_for_user_mistakes_traceback_for_internal_errors(tmp_path, capsys, monkeypatch):
    from unimri import commands

    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), "--input", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unimri predict: error:") and "Traceback" not in err
    for argv, words in ((["datasets", "phantom", "--dataset-kwargs", "{num_cases: 3}"], "not valid JSON"),
                        (["train", "--batch-size", "8,x", "--out", str(tmp_path / "r")], "--batch-size"),
                        (["train", "--stages", "96xab", "--out", str(tmp_path / "r")], "96xab")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError):  # --debug: the same mistake with its traceback
        main(["--debug", "predict", "--checkpoint", str(tmp_path / "none.pt"), "--input", str(tmp_path),
              "--output", str(tmp_path / "o")])

    def broken(args):  # an internal bug: numpy raises, not a unimri check
        return np.zeros(3) + np.zeros(4)

    monkeypatch.setattr(commands, "cmd_datasets", broken)  # build_parser looks it up when main() runs
    with pytest.raises(ValueError, match="broadcast"):
        main(["datasets"])
    try:
        raise TypeError("x")  # raised by the test, outside unimri: not a user error
    except TypeError as exc:
        assert not is_user_error(exc)


def test_bench_help_says_what_it_times(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "training steps" in text and "benchmarks/run.py" in text
