"""Nested cross-validation: the split, and a real run whose trainer only ever loads the
fold's train/val cases while its test cases are scored once; old run folders are refused."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unimri.data.splits import kfold_split, load_nested_split, nested_kfold_split
from unimri.train import TrainConfig, run_experiment

PHANTOM = {"num_cases": 8, "size": 32, "fg_fraction": [0.08, 0.15]}

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(6, 40), k=st.integers(2, 5), seed=st.integers(0, 3), frac=st.floats(0.05, 0.6),
       per_group=st.integers(1, 3))
def test_nested_split_partitions_every_fold(n, k, seed, frac, per_group):
    ids = [f"c{i:03d}" for i in range(n)]
    groups = {c: f"p{i // per_group}" for i, c in enumerate(ids)}
    if len(set(groups.values())) < k:
        return
    outer = kfold_split(ids, k=k, seed=seed, groups=groups)
    if any(len({groups[c] for c in train}) < 2 for train, _ in outer):  # no room for a validation group
        with pytest.raises(ValueError, match="a validation subset needs at least 2"):
            nested_kfold_split(ids, k=k, seed=seed, val_fraction=frac, groups=groups)
        return
    folds = nested_kfold_split(ids, k=k, seed=seed, val_fraction=frac, groups=groups)
    assert len(folds) == k
    assert sorted(c for f in folds for c in f.test) == ids  # every case is tested exactly once
    for f in folds:
        train, val, test = set(f.train), set(f.val), set(f.test)
        assert not (train & val or train & test or val & test) and train | val | test == set(ids)
        assert f.train and f.val and f.test
        for part in (train, val, test):  # a patient's images stay on one side
            others = set(ids) - part
            assert not {groups[c] for c in part} & {groups[c] for c in others}
    # the outer test folds are kfold_split's validation folds: the same seed, the same test sets
    assert [f.test for f in folds] == [v for _, v in outer]


def test_nested_split_file_is_reused_and_checked(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    path = str(tmp_path / "folds.json")
    first = nested_kfold_split(ids, k=3, seed=1, val_fraction=0.25, path=path)
    saved = json.load(open(path))
    assert saved["format"] == "nested-cv" and saved["val_fraction"] == 0.25
    assert nested_kfold_split(ids, k=3, seed=99, val_fraction=0.25, path=path) == first  # the file wins
    assert load_nested_split(path) == first
    with pytest.raises(ValueError, match="does not match"):
        nested_kfold_split(ids, k=3, seed=1, val_fraction=0.5, path=path)
    old = str(tmp_path / "old.json")
    kfold_split(ids, k=3, seed=1, path=old)  # a plain train/val split file: no test folds
    with pytest.raises(ValueError, match="without test folds"):
        nested_kfold_split(ids, k=3, seed=1, path=old)
    for bad in (0, 1, 1.5, "0.2"):
        with pytest.raises(ValueError, match="val_fraction"):
            nested_kfold_split(ids, k=3, val_fraction=bad)
    with pytest.raises(ValueError, match="leaves 1 group"):
        nested_kfold_split(["a", "b", "c", "d"], k=2, groups={"a": 1, "b": 1, "c": 2, "d": 3})


def _instrument(monkeypatch):
    """Record every case id each training/validation dataset hands out (datasets in the order
    the folds build them: train, val, train, val, ...) and the cases each evaluation scores."""
    import unimri.train.engine as engine
    import unimri.train.experiment as experiment

    fetched: list[tuple[str, set]] = []
    scored: list[list[str]] = []
    real_make, real_eval = engine.make_dataset, experiment.evaluate_model

    class Recording:
        def __init__(self, inner, role):
            self.inner, self.seen = inner, set()
            fetched.append((role, self.seen))

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            item = self.inner[i]
            self.seen.add(item["case_id"])
            return item

        def __getattr__(self, name):  # set_epoch and the like reach the real dataset
            return getattr(self.inner, name)

    def make_dataset(cases, cfg, num_classes, train):
        return Recording(real_make(cases, cfg, num_classes, train=train), "train" if train else "val")

    def evaluate_model(model, cases, *args, **kwargs):
        scored.append([c.case_id for c in cases])
        return real_eval(model, cases, *args, **kwargs)

    monkeypatch.setattr(engine, "make_dataset", make_dataset)
    monkeypatch.setattr(experiment, "evaluate_model", evaluate_model)
    return fetched, scored


def test_real_run_never_trains_or_selects_on_its_test_cases(tmp_path, monkeypatch):
    cfg = TrainConfig(dataset="phantom", dataset_kwargs=PHANTOM, features=4, stages=[16, 32], batch_size=2,
                      epochs=[1, 1], folds=2, val_fraction=0.25, device="cpu", progress=False)
    out = tmp_path / "run"
    fetched, scored = _instrument(monkeypatch)
    run_experiment(cfg, str(out))
    assert [role for role, _ in fetched] == ["train", "val", "train", "val"]
    folds = json.load(open(out / "folds.json"))["folds"]
    assert sorted(c for f in folds for c in f["test"]) == sorted(f"phantom2d_0_{i:04d}" for i in range(8))
    for fold, split in enumerate(folds):
        train, val, test = set(split["train"]), set(split["val"]), set(split["test"])
        assert not test & (train | val) and not train & val and len(val) == 1  # 0.25 of 4 -> 1 case
        # the loaders handed out training cases only (drop_last may skip one) and all validation cases
        assert fetched[2 * fold][1] <= train and len(fetched[2 * fold][1]) >= 2
        assert fetched[2 * fold + 1][1] == val
        assert scored[fold] == split["test"]
        result = json.load(open(out / f"fold{fold}" / "result.json"))
        assert result["metrics"]["split"] == "test" and result["cases"] == split
        assert [c["case_id"] for c in result["per_case"]] == split["test"]
    assert "test DSC" in open(out / "metrics.md").read()


def test_old_run_folders_are_refused_on_resume(tmp_path):
    from unimri.cli import main

    old = tmp_path / "old"
    old.mkdir()
    (old / "unimri_run.json").write_text(json.dumps({"kind": "train", "format": 1}))
    (old / "config.json").write_text(json.dumps({"dataset": "phantom", "dataset_kwargs": PHANTOM, "features": 4,
                                                 "stages": [32], "epochs": 1, "folds": 2, "batch_size": 2}))
    cfg = TrainConfig.from_dict(json.load(open(old / "config.json")))
    with pytest.raises(ValueError, match="older unimri whose folds had no held-out test cases"):
        run_experiment(cfg, str(old), resume=True)
    assert main(["train", "--resume", str(old), "--device", "cpu", "--no-progress"]) == 2
    assert sorted(os.listdir(old)) == ["config.json", "unimri_run.json"]  # nothing written
    from unimri.train.experiment import load_result

    with pytest.raises(ValueError, match="out_dir: .*older unimri"):
        load_result(str(old))


def test_evaluate_says_when_it_scores_cases_the_model_has_seen(tmp_path, capsys):
    from unimri.cli import main

    cfg = TrainConfig(dataset="phantom", dataset_kwargs={**PHANTOM, "num_cases": 6}, features=4, stages=[32],
                      batch_size=2, epochs=1, folds=2, fold_indices=[0], device="cpu", progress=False)
    run_experiment(cfg, str(tmp_path / "run"))
    split = json.load(open(tmp_path / "run" / "folds.json"))["folds"][0]
    model = str(tmp_path / "run" / "fold0" / "model.pt")
    assert main(["evaluate", "--checkpoint", model, "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"note: {len(split['train']) + len(split['val'])} of the 6 scored cases trained or validated" in err
    assert main(["evaluate", "--checkpoint", model, "--cases", ",".join(split["test"]), "--device", "cpu",
                 "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().err
