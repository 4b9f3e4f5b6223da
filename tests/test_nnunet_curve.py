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


def test_summary_table_pairs_folds_in_order():
    rows = [{"fold": f, "trainer": t, "epochs": 1, "train_cpu_s": 10.0 * (f + 1), "test_dsc": d}
            for t, ds in (("A", (0.5, 0.7)), ("B", (0.6, 0.6))) for f, d in enumerate(ds)]
    table = nnunet_curve.summary_table(rows, ["A", "B"], [1])
    assert table[2] == "| 1 | 0.600 ± 0.100 / 15 | 0.600 ± 0.000 / 15 | +0.000 (+0.100, -0.100) |"


def test_arguments_smoke_and_refusals():
    args = nnunet_curve.parse_args(["--smoke"])
    assert (args.folds, args.cases, args.epoch_list, args.iterations) == (2, 12, [1], 5)
    assert nnunet_curve.parse_args(["--epochs", "4,1,2"]).epoch_list == [1, 2, 4]
    with pytest.raises(SystemExit):
        nnunet_curve.parse_args(["--folds", "3", "--cases", "6"])  # 4 training cases per fold: too few
    with pytest.raises(SystemExit):
        nnunet_curve.parse_args(["--epochs", "1,x"])
