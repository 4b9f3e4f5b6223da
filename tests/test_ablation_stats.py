"""Study reports: tables, CSV, results files and plots from runs; a tiny multi-seed
ablation through the CLI; the MONAI peer (when monai is installed). The statistics
themselves are tested in test_stats.py."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from unimri.train import TrainConfig
from unimri.studies.ablation import (Cell, imbalance_csv, study_comparisons, study_csv, study_table,
                                     write_study_reports)
from unimri.studies.quality import read_record
from unimri.train.experiment import ExperimentResult
from unimri.runtime.plots import plot_bars, plot_imbalance, plot_time_to_quality, time_to_quality_curve
from unimri.studies.stats import mean_std

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_mean_std_ignores_nan():
    assert mean_std([1.0, 3.0, float("nan")]) == (2.0, 1.0)
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


def _fake_cell(model, variant, dsc_by_seed, cfg):
    runs = {}
    for seed, values in dsc_by_seed.items():
        folds = [{"fold": f, "IoU": v / (2 - v), "DSC": v, "Precision": v, "Recall": v} for f, v in enumerate(values)]
        hist = [{"event": "epoch", "fold": f, "epoch": e, "seconds": 1.0 + seed, "train_loss": 1.0 / (e + 1),
                 "val_loss": 1.0 / (e + 1), "val_dsc": v * e / 2} for f, v in enumerate(values) for e in range(3)]
        runs[seed] = ExperimentResult(f"/nowhere/{variant}-{seed}", cfg, folds, hist, [])
    return Cell(model, variant, runs)


def test_tables_csv_and_plots_from_runs(tmp_path):
    cfg = TrainConfig(folds=3)
    cells = [_fake_cell("unet", "baseline", {0: [0.1, 0.2, 0.3], 1: [0.2, 0.2, 0.1]}, cfg),
             _fake_cell("unet", "better", {0: [0.6, 0.7, 0.8], 1: [0.5, 0.9, 0.6]}, cfg),
             _fake_cell("unet", "same", {0: [0.1, 0.2, 0.3], 1: [0.2, 0.2, 0.1]}, cfg)]
    # seeds are averaged within a test fold first: 3 folds, not 6 pairs
    assert cells[1].values("DSC")[(2, 1)] == 0.6
    assert cells[1].summary("DSC") == pytest.approx((np.mean([0.55, 0.8, 0.7]), np.std([0.55, 0.8, 0.7])))
    comps = study_comparisons(cells)
    assert set(comps) == {("unet", "better"), ("unet", "same")}
    better = comps[("unet", "better")]
    # fold-mean differences 0.4, 0.6, 0.5: mean 0.5; 3 folds cannot reach p < 0.05 (min p = 0.25)
    assert (better.n_folds, better.n_seeds) == (3, 2) and better.mean_diff == pytest.approx(0.5)
    assert better.test.p_value == pytest.approx(0.25) and not better.tested and math.isnan(better.p_holm)
    assert 0.35 <= better.ci[0] <= better.ci[1] <= 0.7
    assert "all 3 fold differences are zero" in comps[("unet", "same")].note
    table = study_table(cells, "Strategy", "phantom")
    assert "| UNet | baseline | " in table and "(baseline)" in table
    better_row = next(line for line in table.splitlines() if line.startswith("|  | better |"))
    assert "| 0.683 ± 0.103 |" in better_row  # test DSC: mean ± std of the fold means 0.55, 0.8, 0.7
    assert "+0.500 [" in table and "n/a (min p 0.25)" in table and "3 outer test fold(s)" in table
    per_run, summary = study_csv(cells, "components", "phantom")
    rows = list(csv.DictReader(io.StringIO(per_run)))
    assert len(rows) == 18 and {r["seed"] for r in rows} == {"0", "1"} and {r["split"] for r in rows} == {"test"}
    srows = {r["variant"]: r for r in csv.DictReader(io.StringIO(summary))}
    assert srows["baseline"]["note"] == "baseline" and srows["baseline"]["DSC_p"] == ""
    assert float(srows["better"]["DSC_mean_diff"]) == pytest.approx(0.5) and srows["better"]["n_folds"] == "3"
    assert float(srows["better"]["DSC_p"]) == pytest.approx(0.25)
    write_study_reports(cells, str(tmp_path), "resizing", "Schedule", "phantom", provenance={"commit": "abc"})
    for name in ("resizing.md", "resizing_results.json", "resizing.csv", "resizing_summary.csv", "bars_unet.png",
                 "curves_unet.png", "time_to_quality_unet.png"):
        assert os.path.isfile(tmp_path / name), name
    record = read_record(str(tmp_path / "resizing_results.json"))
    assert len(record["rows"]) == 18 and record["provenance"] == {"commit": "abc"}
    assert record["evaluation"]["folds"] == 3 and record["evaluation"]["seeds"] == [0, 1]
    assert (tmp_path / "bars_unet.png").read_bytes()[:8] == PNG
    # seeds are kept apart when aligning epochs: seed 1's epochs take 2 s, seed 0's 1 s
    t, dsc = time_to_quality_curve(cells[1].histories)
    assert t == pytest.approx([1.5, 3.0, 4.5]) and dsc[0] == 0.0
    assert imbalance_csv({0.01: cells[:2]}).splitlines()[2].startswith("unet,better,0.01,3,")


def test_time_to_quality_uses_cpu_time_when_every_run_logged_it():
    from unimri.runtime.plots import epoch_clock

    wall = [{"fold": 0, "epoch": e, "seconds": 10.0, "val_dsc": 0.5} for e in range(3)]
    both = [{**r, "cpu_seconds": 2.0} for r in wall]
    assert epoch_clock(both) == "cpu_seconds" and epoch_clock(wall) == "seconds"
    assert epoch_clock(both + wall[:1]) == "seconds"  # one run without CPU time: all on wall time
    assert time_to_quality_curve(both)[0] == pytest.approx([2.0, 4.0, 6.0])
    assert time_to_quality_curve(both, "seconds")[0] == pytest.approx([10.0, 20.0, 30.0])


def test_training_logs_wall_and_cpu_time_per_epoch(tmp_path):
    from unimri.train import run_experiment

    cfg = TrainConfig(dataset="phantom", dataset_kwargs={"num_cases": 4, "size": 32, "fg_fraction": [0.08, 0.15]},
                      features=4, stages=[32], batch_size=2, epochs=2, folds=2, fold_indices=[0],
                      device="cpu", progress=False)
    result = run_experiment(cfg, str(tmp_path / "run"))
    assert len(result.histories) == 2
    for h in result.histories:
        assert h["seconds"] > 0 and h["cpu_seconds"] > 0


def test_plot_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="bars is empty"):
        plot_bars([], str(tmp_path / "b.png"))
    with pytest.raises(ValueError, match="series is empty"):
        plot_imbalance({}, str(tmp_path / "i.png"))
    plot_imbalance({"a": [(0.05, 0.5, 0.1), (0.001, 0.1, 0.05)]}, str(tmp_path / "i.png"))
    plot_time_to_quality({"a": []}, str(tmp_path / "t.png"))
    assert (tmp_path / "i.png").read_bytes()[:8] == PNG and (tmp_path / "t.png").read_bytes()[:8] == PNG


TINY = ["--dataset", "phantom", "--dataset-kwargs", '{"num_cases": 6, "size": 32, "fg_fraction": [0.08, 0.15]}',
        "--features", "4", "--stages", "16,32", "--batch-size", "2", "--epochs", "1,1", "--lr", "0.05",
        "--folds", "2", "--device", "cpu", "--no-progress"]


def test_ablate_cli_with_seeds_writes_paired_stats(tmp_path, capsys):
    from unimri.cli import main

    out = tmp_path / "abl"
    assert main(["ablate", "--study", "resizing", "--seeds", "2", *TINY, "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "resizing.csv")))
    assert len(rows) == 8 and {(r["seed"], r["fold"]) for r in rows} == {("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")}
    summary = {r["variant"]: r for r in csv.DictReader(open(out / "resizing_summary.csv"))}
    assert summary["single stage"]["note"] == "baseline" and summary["progressive resizing"]["n_folds"] == "2"
    assert summary["progressive resizing"]["n_seeds"] == "2"
    for name in ("bars_unet.png", "time_to_quality_unet.png", "unet-single_stage-seed1/metrics.csv"):
        assert os.path.isfile(out / name), name
    # both seeds and both variants were scored on the same outer test folds
    tests = {json.dumps(json_load(out / d / "folds.json")["folds"][f]["test"])
             for d in os.listdir(out) if d.startswith("unet-") for f in (0, 1)}
    assert len(tests) == 2
    printed = capsys.readouterr().out
    assert "Δ test DSC vs baseline" in printed and "p (Holm)" in printed
    record = read_record(str(out / "resizing_results.json"))
    assert record["provenance"]["command"] and record["provenance"]["machine"]["isa"]
    # finished runs read back: the same folds, and the time-to-quality report from them
    from unimri.studies.ablation import time_to_quality_report
    from unimri.train.experiment import load_result

    back = load_result(str(out / "unet-progressive_resizing-seed1"))
    assert [round(f["DSC"], 6) for f in back.folds] == [
        round(float(r["DSC"]), 6) for r in rows if r["variant"] == "progressive resizing" and r["seed"] == "1"]
    png = time_to_quality_report({"one stage": [str(out / f"unet-single_stage-seed{s}") for s in (0, 1)],
                                  "resizing": [str(out / f"unet-progressive_resizing-seed{s}") for s in (0, 1)]},
                                 str(tmp_path / "ttq"))
    ttq = list(csv.DictReader(open(tmp_path / "ttq" / "time_to_quality.csv")))
    assert open(png, "rb").read(8) == PNG and [r["epoch"] for r in ttq] == ["1", "2", "1", "2"]
    with pytest.raises(ValueError, match="not a unimri run folder"):
        load_result(str(tmp_path))
    assert main(["ablate", "--study", "unified", "--seeds", "0", *TINY, "--out", str(tmp_path / "x")]) == 2


def test_imbalance_sweep_cli(tmp_path):
    from unimri.cli import main

    out = tmp_path / "imb"
    args = [*TINY[:2], "--dataset-kwargs", '{"num_cases": 6, "size": 32}', *TINY[4:]]
    assert main(["ablate", "--study", "imbalance", "--fg-fractions", "0.1,0.02", *args, "--epochs", "1",
                 "--stages", "32", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "imbalance.csv")))
    groups = {r["group"] for r in read_record(str(out / "imbalance_results.json"))["rows"]}
    assert groups == {"UNet, lesion fraction 0.1", "UNet, lesion fraction 0.02"}
    assert [(r["fg_fraction"], r["method"]) for r in rows] == [
        ("0.1", "baseline (CE)"), ("0.1", "unified approach"), ("0.02", "baseline (CE)"), ("0.02", "unified approach")]
    assert (out / "imbalance_unet.png").read_bytes()[:8] == PNG
    assert main(["ablate", "--study", "imbalance", "--fg-fractions", "0.5", *args, "--out", str(tmp_path / "y")]) == 2


def test_monai_peer_gets_the_same_folds_and_wall_time(tmp_path):
    pytest.importorskip("monai")
    from unimri.studies.peer import PEER_LABEL, fold_budgets, run_monai_peer

    cfg = TrainConfig(dataset="phantom", dataset_kwargs={"num_cases": 6, "size": 32, "fg_fraction": [0.08, 0.15]},
                      features=4, stages=[32], batch_size=2, epochs=1, folds=2, device="cpu", progress=False)
    ref = ExperimentResult("ref", cfg, [], [{"fold": 0, "seconds": 0.5}, {"fold": 0, "seconds": 0.5},
                                            {"fold": 1, "seconds": 0.2}])
    assert fold_budgets(ref) == {0: 1.0, 1: 0.2}
    with pytest.raises(KeyError):  # these records hold no CPU time: no silent zero budget
        fold_budgets(ref, "cpu_seconds")
    with pytest.raises(ValueError, match="clock"):
        fold_budgets(ref, "minutes")
    result = run_monai_peer(cfg, str(tmp_path / "peer"), fold_budgets(ref))
    assert [f["fold"] for f in result.folds] == [0, 1]
    for f in result.folds:  # whole epochs until the budget is spent: at least one, at most one past it
        assert f["epochs"] >= 1 and f["seconds"] >= f["budget_s"] and f["split"] == "test"
    # the nested split a unimri run of the same configuration makes, and only its test cases scored
    from unimri.train.experiment import load_experiment_cases, nested_split

    expected = nested_split(cfg, load_experiment_cases(cfg), None)
    saved = json_load(tmp_path / "peer" / "folds.json")["folds"]
    assert [f["test"] for f in saved] == [f.test for f in expected]
    for fold in (0, 1):
        done = json_load(tmp_path / "peer" / f"fold{fold}" / "result.json")
        assert [c["case_id"] for c in done["per_case"]] == expected[fold].test
    cpu = run_monai_peer(cfg.replace(fold_indices=[1]), str(tmp_path / "peer_cpu"), {1: 0.3}, clock="cpu")
    assert cpu.folds[0]["seconds"] >= 0.3 and cpu.folds[0]["epochs"] >= 1
    with pytest.raises(ValueError, match="clock"):
        run_monai_peer(cfg, str(tmp_path / "peer3"), {0: 1.0, 1: 1.0}, clock="sundial")
    with pytest.raises(ValueError, match="no wall-time budget"):
        run_monai_peer(cfg, str(tmp_path / "peer2"), {0: 1.0})
    assert PEER_LABEL.startswith("MONAI")


def test_demo_variants_run_in_two_processes_and_overlay_both_polarities(tmp_path):
    from unimri.data.phantom import make_phantom
    from unimri.studies.ablation import DEMO_VARIANTS, _has_polarity, polarity_overlays, run_variants

    cfg = TrainConfig(dataset="phantom", dataset_kwargs={"num_cases": 8, "size": 32, "fg_fraction": [0.08, 0.15]},
                      features=4, stages=[16, 32], batch_size=2, epochs=[1, 1], folds=2, fold_indices=[0],
                      device="cpu", progress=False)
    one = run_variants(cfg, DEMO_VARIANTS, ["unet"], str(tmp_path / "seq"))
    two = run_variants(cfg, DEMO_VARIANTS, ["unet"], str(tmp_path / "par"), jobs=2)
    for a, b in zip(one, two):  # one thread per run: the same numbers whichever process ran it
        assert a.variant == b.variant and a.result.folds == b.result.folds
    assert json_load(tmp_path / "par" / "unet-baseline_ce" / "config.json")["epochs"] == 2  # 1 + 1 epochs
    path = polarity_overlays(two, str(tmp_path / "overlays.png"), n_dark=1, n_bright=1)
    assert path and open(path, "rb").read(8) == PNG
    # the recorded polarity is what the image shows: a dark lesion is darker than its surroundings
    from scipy.ndimage import binary_dilation

    cases = [make_phantom(i, size=64, num_lesions=1) for i in range(12)]
    assert {_has_polarity(c, True) for c in cases} == {True, False}
    for c in cases:
        inside = c.label == 1
        ring = binary_dilation(inside, iterations=3) & ~binary_dilation(inside, iterations=1)
        darker = c.image[0][inside].mean() < c.image[0][ring].mean()
        assert darker == _has_polarity(c, True) != _has_polarity(c, False), (c.case_id, c.meta["lesions"])
    with pytest.raises(ValueError, match="jobs"):
        run_variants(cfg, DEMO_VARIANTS, ["unet"], str(tmp_path / "bad"), jobs=0)


def json_load(path):
    import json

    return json.load(open(path))


def test_monai_peer_takes_sizes_its_unet_cannot():
    """MONAI's UNet needs sizes divisible by 16; the peer pads and crops back, so
    aspect-keeping stages (64x41) and whole validation cases (57x37) run, and an input that
    is already divisible goes through untouched."""
    pytest.importorskip("monai")
    from unimri.studies.peer import DivisiblePadded, monai_unet

    model = monai_unet(2, 1, 2, features=4).eval()
    assert isinstance(model, DivisiblePadded) and model.k == 16
    with pytest.raises(RuntimeError):  # the bare MONAI UNet refuses these sizes
        model.net(torch.randn(1, 1, 64, 41))
    for size in [(64, 41), (57, 37), (17, 16)]:
        x = torch.randn(2, 1, *size)
        out = model(x)
        assert out.shape == (2, 2, *size)
        padded = torch.nn.functional.pad(x, [0, -size[1] % 16, 0, -size[0] % 16])
        torch.testing.assert_close(out, model.net(padded)[:, :, :size[0], :size[1]])
    x = torch.randn(1, 1, 32, 48)
    torch.testing.assert_close(model(x), model.net(x))
    model3 = monai_unet(3, 1, 2, features=2).eval()
    assert model3(torch.randn(1, 1, 20, 17, 16)).shape == (1, 2, 20, 17, 16)
