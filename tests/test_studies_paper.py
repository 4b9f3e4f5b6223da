"""The backbones (table 1) and λ (figure 3f) studies: their variants, the λ report and plot, the
overlays with attention, and a tiny end-to-end `unimri ablate --study backbones`."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from unimri.cli import main
from unimri.studies import paper
from unimri.studies.ablation import DEMO_VARIANTS, STUDIES, Cell
from unimri.train.config import TrainConfig
from unimri.train.experiment import ExperimentResult

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dataset", "phantom", "--dataset-kwargs", json.dumps({"num_cases": 6, "size": 32}), "--features", "4",
        "--stages", "16,32", "--batch-size", "2", "--epochs", "1,1", "--lr", "0.05", "--folds", "2",
        "--device", "cpu", "--no-progress"]


def test_backbones_study_is_the_unified_study_over_the_five_backbones():
    assert STUDIES["backbones"] == ("Method", DEMO_VARIANTS)
    assert paper.STUDY_MODELS["backbones"] == ("unet", "fcn", "rcnn", "segnet", "deeplabv3")


def test_lambda_variants_vary_only_the_unified_losss_weight():
    column, variants = STUDIES["lambda"]
    base = TrainConfig(dataset="phantom", loss="ce", attention=None, stages=[32, 64])
    configs = [(label, base.replace(**change(base))) for label, change in variants]
    assert [label for label, _ in configs] == ["λ = 0.5 (default)"] + [f"λ = {v:g}" for v in
                                                                        (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9)]
    for label, cfg in configs:
        assert cfg.loss == "unified" and cfg.attention == "sas" and cfg.stages == [32, 64]
        assert cfg.loss_kwargs == {"weight": float(label.split()[2]), "delta": 0.6, "gamma": 0.5}
    # λ weights the focal part: the loss module built from the config takes it as `weight`
    from unimri.runtime.registry import create_loss

    loss = create_loss("unified", **configs[1][1].loss_kwargs)
    assert (loss.weight, loss.delta, loss.gamma) == (0.1, 0.6, 0.5)


def _cell(tmp_path, lam: float, dsc: dict[tuple[int, int], float]) -> Cell:
    """A finished λ cell without training: {(fold, seed): DSC}."""
    runs = {}
    for seed in sorted({s for _, s in dsc}):
        cfg = TrainConfig(dataset="phantom", loss="unified", attention="sas", seed=seed,
                          loss_kwargs={"weight": lam, "delta": 0.6, "gamma": 0.5})
        folds = [{"fold": f, "DSC": v, "IoU": v / (2 - v), "Precision": v, "Recall": v}
                 for (f, s), v in sorted(dsc.items()) if s == seed]
        runs[seed] = ExperimentResult(str(tmp_path / f"l{lam}-s{seed}"), cfg, folds)
    return Cell("unet", paper.lambda_label(lam), runs)


def test_mean_interval_averages_seeds_within_a_fold_then_folds():
    from unimri.studies.stats import hierarchical_bootstrap_ci

    scores = {(0, 0): 0.5, (0, 1): 0.7, (1, 0): 0.2, (1, 1): 0.2, (2, 0): 0.9}
    mean, low, high = paper.mean_interval(scores)
    assert mean == pytest.approx((0.6 + 0.2 + 0.9) / 3, abs=1e-12)
    assert (low, high) == hierarchical_bootstrap_ci(scores) and 0.2 <= low < mean < high <= 0.9
    # one fold, one seed: the interval is the value itself
    assert paper.mean_interval({(0, 0): 0.4}) == pytest.approx((0.4, 0.4, 0.4))


def test_lambda_report_writes_csv_and_plot(tmp_path):
    from unimri.studies.stats import hierarchical_bootstrap_ci

    default = {(0, 0): 0.6, (1, 0): 0.4, (0, 1): 0.8, (1, 1): 0.6}
    cells = [_cell(tmp_path, 0.5, default), _cell(tmp_path, 0.1, {(0, 0): 0.3, (1, 0): 0.1, (0, 1): 0.3, (1, 1): 0.1})]
    written = paper.write_lambda_report(cells, str(tmp_path), "phantom")
    assert [os.path.basename(p) for p in written] == ["lambda.csv", "lambda_unet.png"]
    rows = paper.read_lambda_csv(str(tmp_path / "lambda.csv"))
    assert [r["lambda"] for r in rows] == [0.1, 0.5]  # sorted by λ
    assert rows[0]["DSC_mean"] == pytest.approx(0.2, abs=1e-6) and rows[1]["DSC_mean"] == pytest.approx(0.6, abs=1e-6)
    low, high = hierarchical_bootstrap_ci(default)
    assert (rows[1]["DSC_low"], rows[1]["DSC_high"]) == pytest.approx((low, high), abs=1e-6)
    assert rows[0]["n_runs"] == "4" and rows[0]["n_folds"] == "2"
    with open(tmp_path / "lambda_unet.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # a combined figure over datasets from the CSV files
    out = paper.combine_lambda_plots([str(tmp_path / "lambda.csv")], str(tmp_path / "both.png"))
    assert os.path.getsize(out) > 1000


def test_lambda_csv_and_plot_refuse_bad_input(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="x.csv: not a lambda.csv"):
        paper.read_lambda_csv(str(bad))
    with pytest.raises(ValueError, match="cannot read"):
        paper.read_lambda_csv(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="series is empty"):
        paper.plot_lambda({}, str(tmp_path / "p.png"))


def test_ablate_models_default_per_study(monkeypatch, tmp_path):
    import unimri.studies.ablation as ablation

    seen = {}

    def fake_run_study(cfg, study, models, out, **kw):
        seen[study] = list(models)
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, f"{study}.md"), "w").write("table\n")
        return []

    monkeypatch.setattr(ablation, "run_study", fake_run_study)
    assert main(["ablate", "--study", "backbones", *TINY, "--out", str(tmp_path / "a")]) == 0
    assert main(["ablate", "--study", "lambda", *TINY, "--out", str(tmp_path / "b")]) == 0
    assert main(["ablate", "--study", "backbones", "--models", "fcn", *TINY, "--out", str(tmp_path / "c")]) == 0
    assert seen == {"backbones": ["fcn"], "lambda": ["unet"]}
    assert main(["ablate", "--study", "backbones", *TINY, "--out", str(tmp_path / "d")]) == 0
    assert seen["backbones"] == ["unet", "fcn", "rcnn", "segnet", "deeplabv3"]


def test_top_gate_view_is_the_models_alpha_on_a_2d_case():
    from unimri.data.phantom import make_phantom
    from unimri.infer.attention import attention_maps
    from unimri.models import create_model
    from unimri.runtime.inference import InferenceSpec
    from unimri.runtime.scoring import normalized_image
    from unimri.studies.attention_figures import top_gate_view

    torch.manual_seed(0)
    model = create_model("unet", features=4, attention="sas").eval()
    case = make_phantom(0, size=32)
    spec = InferenceSpec(2, (32, 32), 2, 1)
    name, view = top_gate_view(model, spec, case)
    want = attention_maps(model, normalized_image(case, spec.normalize)[None])
    assert name == "skip_level0/gate0" and view.shape == (32, 32)
    np.testing.assert_allclose(view, want[name][0, 0].numpy(), atol=1e-6, rtol=0)
    assert top_gate_view(create_model("unet", features=4).eval(), spec, case) is None


def test_ablate_backbones_end_to_end_writes_table_provenance_and_overlays(tmp_path, capsys):
    out = str(tmp_path / "bb")
    assert main(["ablate", "--study", "backbones", "--models", "unet", *TINY, "--out", out]) == 0
    rows = list(csv.DictReader(open(os.path.join(out, "backbones.csv"))))
    assert {(r["model"], r["variant"]) for r in rows} == {("unet", "baseline (CE)"), ("unet", "unified approach")}
    assert len(rows) == 4 and all(0 <= float(r["DSC"]) <= 1 for r in rows)
    prov = json.load(open(os.path.join(out, "backbones_results.json")))["provenance"]
    assert prov["torch"] == torch.__version__ and prov["cpu_seconds"] > 0 and prov["commit"]
    for name in ("overlays_unet.png", "curves_unet.png", "bars_unet.png"):
        with open(os.path.join(out, name), "rb") as fh:
            assert fh.read(4) == b"\x89PNG"
    # the overlay has a fourth column, the unified approach's top attention gate (2.6 in per column + colour bar)
    from PIL import Image

    assert Image.open(os.path.join(out, "overlays_unet.png")).size[0] == round((2.6 * 4 + 0.6) * 110)
    assert "| UNet | baseline (CE) |" in capsys.readouterr().out


def test_backbones_figure_from_results_files(tmp_path):
    """The Table 1 figure is drawn from results files; a panel whose file is missing is left
    out, a malformed panel argument is refused."""
    pytest.importorskip("matplotlib")
    from unimri.studies.quality import make_record, write_record

    rows = [{"group": g, "method": m, "fold": f, "seed": s, "IoU": 0.1, "DSC": 0.2 + 0.1 * f, "Precision": 0.3,
             "Recall": 0.4} for g in ("UNet", "FCN") for m in ("baseline (CE)", "unified approach")
            for f in range(3) for s in range(2)]
    path = str(tmp_path / "backbones_phantom.json")
    write_record(path, make_record("backbones", "phantom", "Model", "Method", rows, {"folds": 3}, {}))
    m, low, high = paper.mean_interval({(r["fold"], r["seed"]): r["DSC"] for r in rows[:6]})
    assert m == pytest.approx(0.3) and low <= m <= high
    out = str(tmp_path / "backbones.png")
    assert paper.main(["backbones", out, f"Phantom={path}", f"Colin27={tmp_path / 'missing.json'}"]) == 0
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        paper.main(["backbones", out, path])
