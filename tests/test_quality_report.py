"""Quality results files, their table and the docs generator: values, notes, missing files."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from unimri.studies.collect import collect_runs, merged_provenance
from unimri.studies.quality import make_record, read_record, render_file, render_table, write_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVENANCE = {"commit": "0123456789abcdef", "command": "unimri ablate --study components",
              "machine": {"cpu": "Test CPU", "isa": "AVX2", "cpus": 2}, "torch": "2.13.0",
              "date": "2026-12-06T12:00:00Z", "cpu_seconds": 600.0, "wall_seconds": 420.0,
              "load_average": {"start": [0.5, 0.4, 0.3], "end": [2.0, 1.0, 0.5]}}


def _rows(method, dsc_by_fold_seed, group="UNet"):
    return [{"group": group, "method": method, "fold": f, "seed": s, "IoU": d / (2 - d), "DSC": d,
             "Precision": d, "Recall": d} for (f, s), d in dsc_by_fold_seed.items()]


def _record(rows, folds=5):
    return make_record("components", "phantom", "Model", "Strategy", rows,
                       {"folds": folds, "val_fraction": 0.2, "split_seed": 0, "seeds": [0, 1]}, PROVENANCE)


def test_table_values_notes_and_provenance():
    base = {(f, s): 0.4 + 0.02 * f for f in range(5) for s in range(2)}
    better = {(f, s): 0.6 + 0.02 * f + 0.02 * s for f in range(5) for s in range(2)}
    table = render_table(_record(_rows("baseline", base) + _rows("all", better)))
    lines = table.splitlines()
    assert lines[0] == ("| Model | Strategy | test IoU | test DSC | test Precision | test Recall | "
                        "Δ test DSC vs baseline [95 % CI] | p (Holm) |")
    assert lines[2].startswith("| UNet | baseline | ") and lines[2].endswith("| (baseline) |  |")
    # baseline fold means 0.4 + 0.02 f: mean 0.44, population std 0.02 * sqrt(2); "all" is 0.21 higher in
    # every fold (0.20 for seed 0, 0.22 for seed 1): the CI spans the seed resampling only
    assert "| 0.440 ± 0.028 |" in lines[2] and "| 0.650 ± 0.028 |" in lines[3]
    assert "| +0.210 [+0.20" in lines[3] and lines[3].endswith("| n/a (min p 0.0625) |")
    low, high = (float(v) for v in lines[3].split("[")[1].split("]")[0].split(","))
    assert 0.2 <= low < 0.21 < high <= 0.22
    assert "5 outer test fold(s) of 5-fold nested cross-validation" in table
    assert "Holm-corrected within this table; with 5 test folds no two-sided p can be below 0.0625" in table
    assert "commit `0123456789ab`" in table and "Test CPU (AVX2, 2 CPUs)" in table
    assert "CPU time 10.0 min, wall time 7.0 min, load average 0.5 → 2.0" in table


def test_single_method_table_gives_the_ci_of_the_mean_and_the_folds():
    rows = _rows("unified approach", {(f, 0): [0.7, 0.0, 0.8, 0.5, 0.6][f] for f in range(5)})
    table = render_table(_record(rows))
    assert "test DSC 95 % CI" in table and "Δ" not in table
    assert "fold 0 0.700, fold 1 0.000, fold 2 0.800, fold 3 0.500, fold 4 0.600" in table
    ci = table.splitlines()[2].rsplit("|", 2)[1].strip()
    low, high = (float(v) for v in ci.strip("[]").split(","))
    assert 0.0 < low < 0.52 < high <= 0.8


def test_results_files_round_trip_and_are_checked(tmp_path):
    record = _record(_rows("a", {(0, 0): 0.5}), folds=2)
    path = str(tmp_path / "r.json")
    write_record(path, record)
    assert read_record(path) == record and render_file(path) == render_table(record)
    assert render_file(str(tmp_path / "none.json")) == "*Not yet measured on this build (no `none.json`).*\n"
    (tmp_path / "old.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="old.json: not a results file"):
        read_record(str(tmp_path / "old.json"))
    with pytest.raises(ValueError, match=r"rows\[0\]: missing \['DSC'"):
        make_record("s", "d", "Model", "M", [{"group": "g", "method": "m", "fold": 0, "seed": 0}], {}, {})


def test_collect_merges_runs_that_share_their_test_folds(tmp_path):
    from unimri.train import TrainConfig, run_experiment

    cfg = TrainConfig(dataset="phantom", dataset_kwargs={"num_cases": 6, "size": 32, "fg_fraction": [0.08, 0.15]},
                      features=4, stages=[32], batch_size=2, epochs=1, folds=2, device="cpu", progress=False,
                      split_seed=0)
    runs = [str(tmp_path / f"seed{s}") for s in (0, 1)]
    results = [run_experiment(cfg.replace(seed=s), d) for s, d in zip((0, 1), runs)]
    record = collect_runs(runs, "loso", "UNet w4", "unified approach")
    assert [(r["fold"], r["seed"]) for r in record["rows"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert record["rows"][3]["DSC"] == pytest.approx(results[1].folds[1]["DSC"])
    prov = record["provenance"]
    assert prov["cpu_seconds"] == pytest.approx(sum(r.provenance["cpu_seconds"] for r in results), abs=0.11)
    assert prov == merged_provenance(results) and prov["machine"]["isa"]
    other = str(tmp_path / "other")
    run_experiment(cfg.replace(seed=2, split_seed=5, folds=3), other)
    with pytest.raises(ValueError, match="do not share their outer test folds"):
        collect_runs([runs[0], other], "loso", "UNet", "x")


def test_report_quality_tables_render_from_the_results_folder(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("report_quality", os.path.join(ROOT, "benchmarks",
                                                                                  "report_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {"quality-demo", "quality-components-phantom", "quality-components-colin27", "quality-loss",
            "quality-attention", "quality-peer-monai", "quality-colin27-loso"} <= set(module.TABLES)
    monkeypatch.setattr(module, "QUALITY", str(tmp_path))
    assert module.TABLES["quality-demo"]().startswith("*Not yet measured on this build")
    base = {(f, 0): 0.5 for f in range(3)}
    write_record(str(tmp_path / "components_phantom.json"),
                 _record(_rows("baseline", base) + _rows("all (unified approach)", {k: 0.7 for k in base})
                         + _rows("MONAI UNet + DiceCE + Adam", {k: 0.6 for k in base}), folds=3))
    peer = module.TABLES["quality-peer-monai"]()
    phantom = peer.split("**Colin27 hippocampus**")[0]
    assert "| UNet | all (unified approach) |" in phantom and "(baseline)" in phantom
    assert "| MONAI UNet + DiceCE + Adam |" in phantom and "-0.100 [-0.100, -0.100]" in phantom
    assert "baseline |" not in phantom.replace("(baseline)", "")
    assert "not yet measured" in peer.split("**Colin27 hippocampus**")[1].lower()
    components = module.TABLES["quality-components-phantom"]()
    assert components == render_file(str(tmp_path / "components_phantom.json"))
