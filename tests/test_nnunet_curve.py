"""The nnU-Net peer benchmark's scoring, table and arguments (no nnunetv2 needed)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import nnunet_curve  # noqa: E402


def test_dice_of_foreground_with_empty_cases():
    label = np.zeros((4, 4), np.uint8)
    label[:2, :2] = 1  # 4 pixels
    pred = np.zeros_like(label)
    pred[:2, :3] = 1  # 6 pixels, 4 overlap
    assert nnunet_curve.dice(pred, label) == pytest.approx(2 * 4 / 10, abs=1e-12)
    assert nnunet_curve.dice(np.zeros_like(label), np.zeros_like(label)) == 1.0
    assert nnunet_curve.dice(np.zeros_like(label), label) == 0.0


def test_paired_and_curve_tables_order_folds():
    rows = [{"fold": f, "trainer": t, "epochs": 1, "iterations": 30, "train_cpu_s": 10.0 * (f + 1), "test_dsc": d}
            for t, ds in (("A", (0.5, 0.7)), ("B", (0.6, 0.6))) for f, d in enumerate(ds)]
    table = nnunet_curve.paired_table(rows, ["A", "B"], [1])
    assert table[2] == "| 1 | 0.600 ± 0.100 / 15 | 0.600 ± 0.000 / 15 | +0.000 (+0.100, -0.100) |"
    rows += [{"fold": f, "trainer": "unimri", "epochs": e, "iterations": "", "train_cpu_s": 2.0 * e,
              "test_dsc": 0.1 * e + 0.01 * f} for e in (2, 1) for f in (1, 0)]
    curve = nnunet_curve.curve_table(rows, ["A", "unimri"])
    assert curve[2] == "| A | 1 epoch(s) × 30 it | 15 | 0.600 ± 0.100 | 0.500, 0.700 |"
    assert curve[3] == "| unimri pipeline (unified approach) | stages 1,2 epochs | 2 | 0.105 ± 0.005 | 0.100, 0.110 |"
    assert curve[4].startswith("| unimri pipeline (unified approach) | stages 2,4 epochs | 4 | 0.205 ± 0.005 |")


def test_plot_draws_every_series(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"fold": f, "trainer": t, "epochs": e, "iterations": 30, "train_cpu_s": 5.0 * e + f, "test_dsc": 0.1 * e}
            for t in ("nnUNetTrainerBudget", "unimri") for e in (1, 2) for f in (0, 1)]
    path = str(tmp_path / "curve.png")
    nnunet_curve.plot(rows, ["nnUNetTrainerBudget", "unimri"], path)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("fold,trainer,epochs,iterations,train_cpu_s,test_dsc\n0,unimri,16,,9.5,0.57\n")
    assert nnunet_curve.read_rows(str(csv_path)) == [{"fold": 0, "trainer": "unimri", "epochs": 16, "iterations": "",
                                                      "train_cpu_s": 9.5, "test_dsc": 0.57}]
    nnunet_curve.plot_csvs([str(csv_path)], str(tmp_path / "both.png"))
    assert (tmp_path / "both.png").stat().st_size > 0


def test_unimri_series_trains_on_the_training_side_and_scores_the_test_cases(monkeypatch):
    """The unimri series never gives a test case to the trainer, and scores each test case with
    the same DSC as the nnU-Net series."""
    from unimri.data.phantom import phantom_cases
    from unimri.train import engine

    cases = phantom_cases(8, spatial_dims=2, seed=3, size=32)
    seen = []
    real_init = engine.FoldTrainer.__init__

    def spy(self, cfg, fold, train, val, *rest):
        seen.extend(c.case_id for c in train + val)
        real_init(self, cfg, fold, train, val, *rest)

    monkeypatch.setattr(engine.FoldTrainer, "__init__", spy)
    args = nnunet_curve.parse_args(["--smoke", "--threads", "1"])
    rows = []
    nnunet_curve.run_unimri(args, 0, cases[:4], cases[4:6], cases[6:], rows, lambda msg: None)
    assert set(seen) == {c.case_id for c in cases[:6]}
    (row,) = rows
    assert (row["trainer"], row["epochs"], row["test_cases"]) == ("unimri", 1, 2)
    assert 0.0 <= row["test_dsc"] <= 1.0 and row["train_cpu_s"] > 0


def test_arguments_smoke_and_refusals():
    args = nnunet_curve.parse_args(["--smoke"])
    assert (args.folds, args.cases, args.epoch_list, args.iterations) == (2, 12, [1], 5)
    assert args.unimri_epoch_list == [1] and args.seed == 1
    assert nnunet_curve.parse_args(["--epochs", "4,1,2"]).epoch_list == [1, 2, 4]
    with pytest.raises(SystemExit):
        nnunet_curve.parse_args(["--folds", "3", "--cases", "6"])  # 4 training cases per fold: too few
    with pytest.raises(SystemExit):
        nnunet_curve.parse_args(["--epochs", "1,x"])
