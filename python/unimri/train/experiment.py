"""A nested cross-validated training run: the run folder, folds, test scoring and reports.

Each outer fold trains on its ``train`` cases, stops early and keeps the best epoch by
the loss on its ``val`` cases (carved from the non-test cases), and is then scored once
on its ``test`` cases, which nothing before that step has read. Run folder (``out_dir``)::

    unimri_run.json  marker (what made the folder, its format; --overwrite only deletes such folders)
    config.json      the resolved TrainConfig
    folds.json       train / val / test case ids per fold
    log.jsonl        one JSON record per epoch (validation loss and DSC) and per finished fold (test)
    fold<k>/         last.pt (resume state), best.pt, model.pt (final weights), result.json
    metrics.csv/.md  per-fold test metrics and mean ± std over folds
    curves.png       loss and validation DSC per epoch;   overlays.png  test prediction vs ground truth
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from unimri.runtime import registry
from unimri.runtime.provenance import Stopwatch
from unimri._atomic import atomic_write_json, atomic_write_text
from unimri.train.checkpoint import load_checkpoint
from unimri.train.config import TrainConfig
from unimri.train.datasets import infer_in_channels, infer_num_classes
from unimri.train.distributed import DistContext, barrier, init_distributed
from unimri.train.engine import FoldTrainer, check_stage_sizes
from unimri.runtime.scoring import METRIC_NAMES, EvalResult, evaluate_model
from unimri.train.runlog import JsonlLog

MARKER = "unimri_run.json"
#: run folders of this format hold nested splits; an older folder scored its validation cases
RUN_FORMAT = 2


@dataclass
class ExperimentResult:
    """Per-fold metrics, their mean/std, epoch histories and a few example predictions."""

    out_dir: str
    config: TrainConfig
    folds: list[dict[str, Any]]
    histories: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)  # commit, machine, CPU time ... of the run

    def mean_std(self, name: str) -> tuple[float, float]:
        values = np.array([f[name] for f in self.folds], dtype=np.float64)
        if not values.size:
            return float("nan"), float("nan")
        return float(np.nanmean(values)), float(np.nanstd(values))

    @property
    def summary(self) -> dict[str, tuple[float, float]]:
        return {m: self.mean_std(m) for m in METRIC_NAMES}


def prepare_out_dir(out_dir: str, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an existing non-empty folder unless ``resume`` or ``overwrite`` (unimri runs only)."""
    if resume:
        if not os.path.isfile(os.path.join(out_dir, MARKER)):
            raise ValueError(f"resume: {out_dir!r} is not a unimri run folder (no {MARKER})")
        check_run_format(out_dir)
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out: {out_dir!r} exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise ValueError(f"out: folder {out_dir!r} already exists and is not empty; "
                             "pass --overwrite to replace it or --resume to continue it")
        if not os.path.isfile(os.path.join(out_dir, MARKER)):
            raise ValueError(f"out: {out_dir!r} is not a unimri run folder (no {MARKER}); "
                             "refusing to delete it even with --overwrite")
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)


def check_run_format(out_dir: str, what: str = "resume") -> None:
    """Refuse a run folder made before nested cross-validation (its scores are validation scores)."""
    marker = json.load(open(os.path.join(out_dir, MARKER)))
    if int(marker.get("format", 1)) < RUN_FORMAT:
        raise ValueError(f"{what}: {out_dir!r} was made by an older unimri whose folds had no held-out "
                         f"test cases (each fold's validation cases chose the epoch and were also "
                         f"scored); it cannot be continued under nested cross-validation. Start a new "
                         f"run folder (or --overwrite this one).")


_CASES_CACHE: dict[str, list] = {}
_CASES_CACHE_SIZE = 4


def load_experiment_cases(cfg: TrainConfig) -> list:
    """The dataset's cases, checked for training; built-in datasets are kept in memory for
    the next run in this process (an ablation loads the same data dozens of times)."""
    key = json.dumps([cfg.dataset, cfg.dataset_kwargs], sort_keys=True, default=str)
    builtin = not os.path.exists(cfg.dataset)  # a folder's files may change between runs
    if builtin and key in _CASES_CACHE:
        cases = _CASES_CACHE[key]
    else:
        cases = registry.load_cases(cfg.dataset, **cfg.dataset_kwargs)
        if builtin:
            while len(_CASES_CACHE) >= _CASES_CACHE_SIZE:
                _CASES_CACHE.pop(next(iter(_CASES_CACHE)))
            _CASES_CACHE[key] = cases
    cases = list(cases)
    if len(cases) < cfg.folds:
        raise ValueError(f"folds: {cfg.folds}-fold cross-validation needs at least {cfg.folds} cases, "
                         f"dataset {cfg.dataset!r} has {len(cases)}")
    if any(c.label is None for c in cases):
        raise ValueError(f"dataset: {cfg.dataset!r} has cases without labels; training needs labels")
    return cases


def run_experiment(cfg: TrainConfig, out_dir: str, *, resume: bool = False, overwrite: bool = False,
                   ctx: DistContext | None = None, cases: Sequence[Any] | None = None,
                   n_examples: int = 3, kind: str = "train") -> ExperimentResult:
    """Train and evaluate ``cfg.selected_folds()`` of a k-fold split; write the run folder.

    Everything that can be checked (names, stage sizes, the folder) is checked before
    anything is written.
    """
    cfg.validate()
    stopwatch = Stopwatch()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device)
    try:
        cases = list(cases) if cases is not None else load_experiment_cases(cfg)
        num_classes, in_channels = infer_num_classes(cases), infer_in_channels(cases)
        spec = cfg.model_spec(in_channels, num_classes)
        per_rank = [max(1, b // ctx.world_size) for b in cfg.stage_batch_sizes]
        check_stage_sizes(registry.create_model(spec), in_channels, num_classes, cfg.stage_sizes, cfg.model,
                          per_rank)
        if ctx.is_main:
            prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
            if resume:
                saved = json.load(open(os.path.join(out_dir, "config.json")))
                volatile = {"device", "progress", "num_workers", "stop_after_epochs"}
                now = {k: v for k, v in cfg.to_dict().items() if k not in volatile}
                saved = TrainConfig.from_dict(saved).to_dict()  # keys added since: their defaults
                if {k: v for k, v in saved.items() if k not in volatile} != now:
                    raise ValueError(f"resume: the configuration differs from the one saved in {out_dir!r}")
            else:
                atomic_write_json(os.path.join(out_dir, MARKER), {"kind": kind, "format": RUN_FORMAT})
                atomic_write_json(os.path.join(out_dir, "config.json"), cfg.to_dict())
        barrier(ctx)
        by_id = {c.case_id: c for c in cases}
        if len(by_id) != len(cases):
            raise ValueError(f"dataset: case ids are not unique ({len(cases)} cases, {len(by_id)} ids)")
        splits = nested_split(cfg, cases, os.path.join(out_dir, "folds.json") if ctx.is_main else None)
        log = JsonlLog(os.path.join(out_dir, "log.jsonl") if ctx.is_main else None)
        result = ExperimentResult(out_dir, cfg, [])
        epochs_done = [0]
        for fold in cfg.selected_folds():
            split = splits[fold]
            fold_dir = os.path.join(out_dir, f"fold{fold}")
            done_path = os.path.join(fold_dir, "result.json")
            if resume and os.path.isfile(done_path):
                done = json.load(open(done_path))
                result.folds.append(done["metrics"])
                result.histories.extend(done["history"])
                if not result.examples:
                    result.examples = _load_examples(fold_dir)
                continue
            os.makedirs(fold_dir, exist_ok=True)
            if resume and ctx.is_main:
                _drop_unsaved_epochs(log, fold, os.path.join(fold_dir, "last.pt"))
            trainer = FoldTrainer(cfg, fold, [by_id[i] for i in split.train], [by_id[i] for i in split.val],
                                  fold_dir, ctx, log, in_channels, num_classes)
            model = trainer.run(resume=resume, epochs_done_in_run=epochs_done)
            if ctx.is_main:  # the fold's test cases are read here for the first time
                evaluation = evaluate_model(model, [by_id[i] for i in split.test], trainer.inference, ctx.device,
                                            cfg.normalize, progress=cfg.progress, n_examples=n_examples)
                metrics = {"fold": fold, "split": "test", "n_test": len(split.test), **evaluation.summary}
                if trainer.diverged is not None:
                    metrics["diverged"] = trainer.diverged
                atomic_write_json(done_path, {"metrics": metrics, "history": trainer.history,
                                              "per_case": evaluation.per_case,
                                              "cases": {"train": split.train, "val": split.val,
                                                        "test": split.test}})
                _save_examples(fold_dir, evaluation)
                log.write({"event": "fold", **metrics})
                result.folds.append(metrics)
                result.histories.extend(trainer.history)
                if not result.examples:
                    result.examples = evaluation.examples
            barrier(ctx)
        if ctx.is_main:
            result.provenance = stopwatch.record()
            write_reports(result)
        return result
    finally:
        if own_ctx:
            from unimri.train.distributed import shutdown

            shutdown(ctx)


def nested_split(cfg: TrainConfig, cases: Sequence[Any], path: str | None):
    """The run's nested split (:func:`unimri.data.splits.nested_kfold_split`), by group when
    the cases name enough distinct groups (``meta["group"]``, e.g. patients), else by case."""
    ids = sorted(c.case_id for c in cases)
    group_of = {c.case_id: (c.meta or {}).get("group") for c in cases}
    grouped = all(g is not None for g in group_of.values()) and len(set(group_of.values())) > cfg.folds
    return registry.nested_kfold_split(ids, k=cfg.folds, seed=cfg.split_seed_or_seed,
                                       val_fraction=float(cfg.val_fraction), path=path,
                                       groups={c: str(g) for c, g in group_of.items()} if grouped else None)


def load_result(out_dir: str) -> ExperimentResult:
    """A finished run folder read back (config, per-fold metrics, histories, examples)."""
    if not os.path.isfile(os.path.join(out_dir, "config.json")):
        raise ValueError(f"out_dir: {out_dir!r} is not a unimri run folder (no config.json)")
    if os.path.isfile(os.path.join(out_dir, MARKER)):
        check_run_format(out_dir, "out_dir")
    cfg = TrainConfig.from_dict(json.load(open(os.path.join(out_dir, "config.json"))))
    result = ExperimentResult(out_dir, cfg, [])
    folds = sorted((int(name[4:]), name) for name in os.listdir(out_dir)
                   if name.startswith("fold") and name[4:].isdigit()
                   and os.path.isfile(os.path.join(out_dir, name, "result.json")))
    for _, name in folds:
        done = json.load(open(os.path.join(out_dir, name, "result.json")))
        result.folds.append(done["metrics"])
        result.histories.extend(done["history"])
        if not result.examples:
            result.examples = _load_examples(os.path.join(out_dir, name))
    summary = os.path.join(out_dir, "results.json")
    if os.path.isfile(summary):
        result.provenance = json.load(open(summary)).get("provenance", {})
    return result


def _drop_unsaved_epochs(log: JsonlLog, fold: int, last_path: str) -> None:
    """Remove epoch records this fold logged after its last checkpoint (they will be rerun)."""
    done = load_checkpoint(last_path)["global_epoch"] if os.path.exists(last_path) else 0
    log.truncate(lambda r: not (r.get("event") == "epoch" and r.get("fold") == fold and r["epoch"] >= done))


def _save_examples(fold_dir: str, evaluation: EvalResult) -> None:
    if not evaluation.examples:
        return
    arrays = {}
    for i, ex in enumerate(evaluation.examples):
        for key in ("image", "label", "prediction"):
            arrays[f"{i}_{key}"] = ex[key]
    ids = [ex["case_id"] for ex in evaluation.examples]
    from unimri._atomic import atomic_write_bytes

    atomic_write_bytes(os.path.join(fold_dir, "examples.npz"),
                       lambda fh: np.savez_compressed(fh, case_ids=np.array(ids), **arrays))


def _load_examples(fold_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(fold_dir, "examples.npz")
    if not os.path.exists(path):
        return []
    data = np.load(path)
    return [{"case_id": str(cid), "image": data[f"{i}_image"], "label": data[f"{i}_label"],
             "prediction": data[f"{i}_prediction"]} for i, cid in enumerate(data["case_ids"])]


def fold_table(result: ExperimentResult) -> tuple[str, str]:
    """(CSV text, markdown text) of per-fold test metrics plus mean and std rows."""
    cols = ["fold", *METRIC_NAMES]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    for f in result.folds:
        writer.writerow([f["fold"], *(f"{f[m]:.6f}" for m in METRIC_NAMES)])
    means = result.summary
    writer.writerow(["mean", *(f"{means[m][0]:.6f}" for m in METRIC_NAMES)])
    writer.writerow(["std", *(f"{means[m][1]:.6f}" for m in METRIC_NAMES)])
    md = ["| test fold | " + " | ".join(f"test {m}" for m in METRIC_NAMES) + " |", "|---" * len(cols) + "|"]
    for f in result.folds:
        md.append(f"| {f['fold']} | " + " | ".join(f"{f[m]:.3f}" for m in METRIC_NAMES) + " |")
    md.append("| mean ± std | " + " | ".join(f"{means[m][0]:.3f} ± {means[m][1]:.3f}" for m in METRIC_NAMES) + " |")
    return buf.getvalue(), "\n".join(md) + "\n"


def write_reports(result: ExperimentResult) -> None:
    """metrics.csv / metrics.md / results.json / curves.png / overlays.png in the run folder."""
    from unimri.runtime.plots import plot_curves, plot_overlays

    out = result.out_dir
    csv_text, md_text = fold_table(result)
    atomic_write_text(os.path.join(out, "metrics.csv"), csv_text)
    atomic_write_text(os.path.join(out, "metrics.md"), md_text)
    atomic_write_json(os.path.join(out, "results.json"),
                      {"split": "test", "folds": result.folds,
                       "summary": {m: {"mean": v[0], "std": v[1]} for m, v in result.summary.items()},
                       "provenance": result.provenance})
    label = f"{result.config.model} / {result.config.loss}"
    if result.histories:
        plot_curves({label: result.histories}, os.path.join(out, "curves.png"), title=label)
    if result.examples:
        plot_overlays([{**ex, "predictions": {label: ex["prediction"]}} for ex in result.examples],
                      os.path.join(out, "overlays.png"), title=label)
