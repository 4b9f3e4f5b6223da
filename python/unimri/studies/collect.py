"""Gather finished ``unimri train`` run folders (e.g. one per seed) into one quality results file.

    python -m unimri.studies.collect --out benchmarks/results/quality/colin27_loso_w16.json \\
        --study colin27-loso --group "UNet w16" --method "unified approach" runs/seed0 runs/seed1 runs/seed2

Every run must be a nested-CV run folder with the same outer test folds; the rows are its
per-fold test scores, the provenance that of the runs together (their commits, commands,
summed CPU and wall time, the load at the first start and the last end).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from unimri.studies.quality import fold_row, make_record, write_record
from unimri.train.experiment import ExperimentResult, load_result


def _test_folds(run_dir: str) -> list[list[str]]:
    return [f["test"] for f in json.load(open(os.path.join(run_dir, "folds.json")))["folds"]]


def merged_provenance(results: Sequence[ExperimentResult]) -> dict[str, Any]:
    """One provenance record for several runs (see the module docstring)."""
    records = [r.provenance for r in results if r.provenance]
    if not records:
        return {}

    def distinct(key: str) -> str:
        return "; ".join(dict.fromkeys(str(p.get(key, "?")) for p in records))

    loads = [p.get("load_average") or {} for p in records]
    return {"commit": distinct("commit"), "command": distinct("command"), "machine": records[0].get("machine", {}),
            "torch": distinct("torch"), "date": max(str(p.get("date", "")) for p in records),
            "cpu_seconds": round(sum(float(p.get("cpu_seconds", 0.0)) for p in records), 1),
            "wall_seconds": round(sum(float(p.get("wall_seconds", 0.0)) for p in records), 1),
            "load_average": {"start": loads[0].get("start"), "end": loads[-1].get("end")}}


def collect_runs(run_dirs: Sequence[str], study: str, group: str, method: str,
                 column: str = "Method") -> dict[str, Any]:
    """The quality record of ``run_dirs`` (one method, one row per run and test fold)."""
    if not run_dirs:
        raise ValueError("run_dirs: give at least one run folder")
    results = [load_result(d) for d in run_dirs]
    splits = [_test_folds(d) for d in run_dirs]
    if any(s != splits[0] for s in splits[1:]):
        raise ValueError(f"run_dirs: the runs do not share their outer test folds ({', '.join(run_dirs)}); "
                         f"give them the same --split-seed")
    rows = [fold_row(group, method, r.config.seed, f) for r in results for f in r.folds]
    cfg = results[0].config
    evaluation = {"folds": cfg.folds, "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed_or_seed,
                  "seeds": sorted({int(r.config.seed) for r in results})}
    return make_record(study, os.path.basename(str(cfg.dataset).rstrip("/")), "Model", column, rows, evaluation,
                       merged_provenance(results))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m unimri.studies.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the quality results file (.json) to write")
    ap.add_argument("--study", required=True, help="study name recorded in the file")
    ap.add_argument("--group", default="UNet", help="row group, e.g. the model (default UNet)")
    ap.add_argument("--method", required=True, help="method label of the runs")
    ap.add_argument("runs", nargs="+", metavar="RUN_FOLDER")
    args = ap.parse_args(argv)
    write_record(args.out, collect_runs(args.runs, args.study, args.group, args.method))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
