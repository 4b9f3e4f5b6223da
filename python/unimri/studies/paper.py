"""The paper's table 1 over every backbone and its λ sweep (figure 3f), with their results files.

* ``backbones`` (table 1): for each of UNet, FCN, RCNN, SegNet and DeepLabV3, the
  cross-entropy baseline against the unified approach (SAS + unified loss + progressive
  resizing), the two methods of the ``unified`` study. Run with ``--spatial-dims 3`` and a
  ``--patch-size`` on a 3D dataset it is the 3D result (docs/studies.md).
* ``lambda`` (figure 3f): the unified approach with the unified loss's λ (``weight``, the
  share of the focal part) from 0.1 to 0.9, δ = 0.6 and γ = 0.5 (the paper's values). The
  default λ = 0.5 comes first, so every other λ is compared with the default.

:func:`write_paper_reports` writes ``<study>_provenance.json`` (commit, command, machine,
torch version, date, training CPU time) for these studies and, for ``lambda``,
``lambda.csv`` and ``lambda_<model>.png`` (test DSC against λ).
"""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from unimri._atomic import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from unimri.studies.ablation import Cell

BACKBONES = ("unet", "fcn", "rcnn", "segnet", "deeplabv3")
LAMBDAS = (0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9)  # the default first: the study's baseline
PAPER_DELTA, PAPER_GAMMA = 0.6, 0.5
#: the models a study runs when ``--models`` is not given
STUDY_MODELS = {"backbones": BACKBONES}


def lambda_label(lam: float) -> str:
    return f"λ = {lam:g}" + (" (default)" if lam == 0.5 else "")


def lambda_variants() -> list[tuple[str, Any]]:
    """(label, config change) per λ: the unified approach with the unified loss's weight λ."""
    def change(lam: float):
        return lambda c: {"loss": "unified", "attention": "sas",
                          "loss_kwargs": {**c.loss_kwargs, "weight": lam, "delta": PAPER_DELTA,
                                          "gamma": PAPER_GAMMA}}
    return [(lambda_label(lam), change(lam)) for lam in LAMBDAS]


def _lambda_of(cell: "Cell") -> float:
    return float(cell.result.config.loss_kwargs["weight"])


# ---------------------------------------------------------------------------- provenance
def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_cpu_seconds(cells: Sequence["Cell"]) -> float:
    """CPU time of every run's training processes (the epochs' ``cpu_seconds``, validation
    included), summed over the cells; identical configurations shared by cells count once."""
    seen, total = set(), 0.0
    for cell in cells:
        for result in cell.runs.values():
            if result.out_dir in seen:
                continue
            seen.add(result.out_dir)
            total += sum(float(h.get("cpu_seconds", 0.0)) for h in result.histories)
    return round(total, 1)


def provenance(cells: Sequence["Cell"], command: str | None = None) -> dict[str, Any]:
    """Where a study's numbers come from: commit, command, machine (CPU model, ISA, cores,
    load average), torch version, date, the training CPU time of its runs (epochs with their
    validation) and the CPU time of the whole command so far (loading, scoring, figures too)."""
    import torch

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"commit": _git_commit(),
            "command": command if command is not None else _command_line(),
            "machine": {"cpu": _cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
                        "cpus": os.cpu_count(), "os": platform.platform(), "load_average": load},
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "training_cpu_seconds": training_cpu_seconds(cells),
            "process_cpu_seconds": _process_cpu_seconds()}


def _command_line() -> str:
    program = os.path.basename(sys.argv[0])
    if program == "__main__.py":  # python -m unimri
        program = "python -m unimri"
    return " ".join([program, *sys.argv[1:]])


def _process_cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ``--jobs`` workers) so far."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


# ---------------------------------------------------------------------------- the λ sweep
def test_scores(cell: "Cell", metric: str = "DSC") -> dict[tuple[int, int], float]:
    """{(fold, seed): metric} of a cell's scored folds."""
    return {(int(f["fold"]), seed): float(f[metric]) for seed, r in sorted(cell.runs.items()) for f in r.folds}


def mean_interval(scores: Mapping[tuple[int, int], float]) -> tuple[float, float, float, str]:
    """(mean, low, high, what the interval is) of {(fold, seed): score}.

    The mean is over folds of each fold's seed mean. The interval is the statistics
    module's hierarchical (fold, seed) bootstrap 95 % CI when it provides one
    (``hierarchical_bootstrap_ci``), else mean ± the std over folds, said so in the last
    element.
    """
    import numpy as np

    per_fold: dict[int, list[float]] = {}
    for (fold, _seed), v in scores.items():
        if math.isfinite(v):
            per_fold.setdefault(fold, []).append(v)
    if not per_fold:
        return float("nan"), float("nan"), float("nan"), "no finite scores"
    means = np.array([np.mean(v) for _, v in sorted(per_fold.items())])
    mean = float(means.mean())
    try:
        from unimri.studies.stats import hierarchical_bootstrap_ci
    except ImportError:
        std = float(means.std())
        return mean, mean - std, mean + std, "mean ± std over test folds"
    low, high = hierarchical_bootstrap_ci({k: v for k, v in scores.items() if math.isfinite(v)})
    return mean, float(low), float(high), "95 % hierarchical bootstrap CI (folds, seeds)"


def lambda_rows(cells: Sequence["Cell"]) -> list[dict[str, Any]]:
    """One row per (model, λ), sorted: n runs, test DSC mean and interval."""
    rows = []
    for cell in cells:
        scores = test_scores(cell)
        mean, low, high, kind = mean_interval(scores)
        rows.append({"model": cell.model, "lambda": _lambda_of(cell), "n_runs": len(scores),
                     "n_folds": len({f for f, _ in scores}), "DSC_mean": mean, "DSC_low": low,
                     "DSC_high": high, "interval": kind})
    return sorted(rows, key=lambda r: (r["model"], r["lambda"]))


def lambda_csv(rows: Sequence[Mapping[str, Any]], dataset: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "model", "lambda", "n_runs", "n_folds", "DSC_mean", "DSC_low", "DSC_high", "interval"])
    for r in rows:
        w.writerow([dataset, r["model"], f"{r['lambda']:g}", r["n_runs"], r["n_folds"],
                    *(f"{r[k]:.6f}" for k in ("DSC_mean", "DSC_low", "DSC_high")), r["interval"]])
    return buf.getvalue()


def read_lambda_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a ``lambda.csv``; ValueError naming the file when it is not one."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    need = {"dataset", "model", "lambda", "DSC_mean", "DSC_low", "DSC_high", "interval"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: not a lambda.csv (expected columns {sorted(need)})")
    return [{**r, "lambda": float(r["lambda"]), **{k: float(r[k]) for k in ("DSC_mean", "DSC_low", "DSC_high")}}
            for r in rows]


def plot_lambda(series: Mapping[str, Sequence[Mapping[str, Any]]], path: str, title: str = "") -> str:
    """Test DSC against λ, one line per label (a dataset or model), error bars from the rows'
    interval (its kind on the y label); the default λ = 0.5 marked."""
    from unimri.runtime.plots import _plt, _save

    if not series or not any(series.values()):
        raise ValueError("plot_lambda: series is empty")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    kinds = sorted({r["interval"] for rows in series.values() for r in rows})
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["lambda"])
        xs = [r["lambda"] for r in rows]
        ys = [r["DSC_mean"] for r in rows]
        err = [[y - r["DSC_low"] for y, r in zip(ys, rows)], [r["DSC_high"] - y for y, r in zip(ys, rows)]]
        ax.errorbar(xs, ys, yerr=err, fmt="-o", ms=4, capsize=3, color=f"C{i % 10}", label=label)
    ax.axvline(0.5, color="0.5", ls=":", lw=1, label="default λ = 0.5")
    ax.set_xlabel("λ (weight of the focal part; δ = 0.6, γ = 0.5)")
    ax.set_ylabel("test DSC\n(" + "; ".join(kinds) + ")", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def combine_lambda_plots(csv_paths: Sequence[str], path: str, title: str = "") -> str:
    """One λ figure from several studies' ``lambda.csv`` (e.g. phantom and Colin27), a line
    per (dataset, model)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for p in csv_paths:
        for r in read_lambda_csv(p):
            series.setdefault(f"{os.path.basename(r['dataset'].rstrip('/'))} / {r['model']}", []).append(r)
    return plot_lambda(series, path, title=title or "Unified approach: test DSC against λ")


# ---------------------------------------------------------------------------- reports
def write_paper_reports(cells: Sequence["Cell"], out_dir: str, study: str, dataset: str) -> list[str]:
    """The files these studies add to the common reports (see the module docstring)."""
    from unimri.studies.ablation import MODEL_TITLES

    written = []
    record = {"study": study, "dataset": dataset, "provenance": provenance(cells),
              "cells": [{"model": c.model, "variant": c.variant,
                         "runs": {str(s): r.out_dir for s, r in sorted(c.runs.items())}} for c in cells]}
    path = os.path.join(out_dir, f"{study}_provenance.json")
    atomic_write_json(path, record)
    written.append(path)
    if study != "lambda":
        return written
    rows = lambda_rows(cells)
    path = os.path.join(out_dir, "lambda.csv")
    atomic_write_text(path, lambda_csv(rows, dataset))
    written.append(path)
    name = os.path.basename(dataset.rstrip("/"))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        written.append(plot_lambda({name: mine}, os.path.join(out_dir, f"lambda_{model}.png"),
                                   title=f"{MODEL_TITLES.get(model, model)}, unified approach on {name}: "
                                         "test DSC against λ"))
    return written
