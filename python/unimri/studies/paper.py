"""The paper's table 1 over every backbone and its λ sweep (figure 3f), with their results files.

* ``backbones`` (table 1): for each of UNet, FCN, RCNN, SegNet and DeepLabV3, the
  cross-entropy baseline against the unified approach (SAS + unified loss + progressive
  resizing), the two methods of the ``unified`` study. Run with ``--spatial-dims 3`` and a
  ``--patch-size`` on a 3D dataset it is the 3D result (docs/studies.md).
* ``lambda`` (figure 3f): the unified approach with the unified loss's λ (``weight``, the
  share of the focal part) from 0.1 to 0.9, δ = 0.6 and γ = 0.5 (the paper's values). The
  default λ = 0.5 comes first, so every other λ is compared with the default.

:func:`write_lambda_report` adds ``lambda.csv`` and ``lambda_<model>.png`` (test DSC
against λ) to the reports every study writes, whose ``<study>_results.json`` carries the
provenance (commit, command, machine, torch version, date, CPU time).
"""
from __future__ import annotations

import csv
import io
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from unimri._atomic import atomic_write_text
from unimri.studies.stats import fold_means, hierarchical_bootstrap_ci

if TYPE_CHECKING:
    from unimri.studies.reports import Cell

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


# ---------------------------------------------------------------------------- the λ sweep
def mean_interval(scores: Mapping[tuple[int, int], float]) -> tuple[float, float, float]:
    """(mean, low, high) of {(fold, seed): test score}: the mean over test folds of each
    fold's seed mean, and its hierarchical (fold, seed) bootstrap 95 % CI."""
    means = list(fold_means(scores).values())
    if not means:
        return float("nan"), float("nan"), float("nan")
    low, high = hierarchical_bootstrap_ci(scores)
    return sum(means) / len(means), low, high


def lambda_rows(cells: Sequence["Cell"]) -> list[dict[str, Any]]:
    """One row per (model, λ), sorted: n runs and test folds, test DSC mean and its 95 % CI."""
    rows = []
    for cell in cells:
        scores = cell.values("DSC")
        mean, low, high = mean_interval(scores)
        rows.append({"model": cell.model, "lambda": _lambda_of(cell), "n_runs": len(scores),
                     "n_folds": len({f for f, _ in scores}), "DSC_mean": mean, "DSC_low": low,
                     "DSC_high": high})
    return sorted(rows, key=lambda r: (r["model"], r["lambda"]))


def lambda_csv(rows: Sequence[Mapping[str, Any]], dataset: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "model", "lambda", "n_runs", "n_folds", "DSC_mean", "DSC_ci_low", "DSC_ci_high"])
    for r in rows:
        w.writerow([dataset, r["model"], f"{r['lambda']:g}", r["n_runs"], r["n_folds"],
                    *(f"{r[k]:.6f}" for k in ("DSC_mean", "DSC_low", "DSC_high"))])
    return buf.getvalue()


def read_lambda_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a ``lambda.csv``; ValueError naming the file when it is not one."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    need = {"dataset", "model", "lambda", "DSC_mean", "DSC_ci_low", "DSC_ci_high"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: not a lambda.csv (expected columns {sorted(need)})")
    return [{**r, "lambda": float(r["lambda"]), "DSC_mean": float(r["DSC_mean"]), "DSC_low": float(r["DSC_ci_low"]),
             "DSC_high": float(r["DSC_ci_high"])} for r in rows]


def plot_lambda(series: Mapping[str, Sequence[Mapping[str, Any]]], path: str, title: str = "") -> str:
    """Test DSC against λ, one line per label (a dataset or model), error bars the rows' 95 %
    CI (``DSC_low``, ``DSC_high``); the default λ = 0.5 marked."""
    from unimri.runtime.plots import _plt, _save

    if not series or not any(series.values()):
        raise ValueError("plot_lambda: series is empty")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["lambda"])
        xs = [r["lambda"] for r in rows]
        ys = [r["DSC_mean"] for r in rows]
        err = [[y - r["DSC_low"] for y, r in zip(ys, rows)], [r["DSC_high"] - y for y, r in zip(ys, rows)]]
        ax.errorbar(xs, ys, yerr=err, fmt="-o", ms=4, capsize=3, color=f"C{i % 10}", label=label)
    ax.axvline(0.5, color="0.5", ls=":", lw=1, label="default λ = 0.5")
    ax.set_xlabel("λ (weight of the focal part; δ = 0.6, γ = 0.5)")
    ax.set_ylabel("test DSC (mean over test folds,\n95 % hierarchical bootstrap CI)", fontsize=8)
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


def plot_backbones(records: Mapping[str, Mapping[str, Any]], path: str, metric: str = "DSC") -> str:
    """Table 1 as a figure: per backbone, the baseline's and the unified approach's test
    ``metric`` (mean over test folds of the seed means, hierarchical bootstrap 95 % CI), one
    panel per dataset; ``records`` maps a panel title to a backbones quality record."""
    from unimri.runtime.plots import _plt, _save

    if not records:
        raise ValueError("plot_backbones: no results records")
    plt = _plt()
    fig, axes = plt.subplots(1, len(records), figsize=(4.8 * len(records), 3.8), squeeze=False)
    for ax, (title, record) in zip(axes[0], records.items()):
        groups = list(dict.fromkeys(r["group"] for r in record["rows"]))
        methods = list(dict.fromkeys(r["method"] for r in record["rows"]))
        for j, method in enumerate(methods):
            stats = [mean_interval({(int(r["fold"]), int(r["seed"])): float(r[metric]) for r in record["rows"]
                                    if r["group"] == g and r["method"] == method}) for g in groups]
            xs = [i + (j - (len(methods) - 1) / 2) * 0.38 for i in range(len(groups))]
            ax.bar(xs, [m for m, _, _ in stats], width=0.36, color=f"C{j}", label=method,
                   yerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]], capsize=3)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"test {metric} (95 % CI)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------- reports
def write_lambda_report(cells: Sequence["Cell"], out_dir: str, dataset: str) -> list[str]:
    """``lambda.csv`` and ``lambda_<model>.png`` of a finished λ study in ``out_dir``."""
    from unimri.studies.reports import MODEL_TITLES

    rows = lambda_rows(cells)
    path = os.path.join(out_dir, "lambda.csv")
    atomic_write_text(path, lambda_csv(rows, dataset))
    written = [path]
    name = os.path.basename(dataset.rstrip("/"))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        written.append(plot_lambda({name: mine}, os.path.join(out_dir, f"lambda_{model}.png"),
                                   title=f"{MODEL_TITLES.get(model, model)}, unified approach on {name}: "
                                         "test DSC against λ"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unimri.studies.paper backbones OUT.png "Title=results.json" ...``: the
    Table 1 figure from committed backbones results files (scripts/quality_runs.sh)."""
    import argparse

    from unimri.studies.quality import read_record

    ap = argparse.ArgumentParser(description="Figures of the paper's studies from results files")
    ap.add_argument("figure", choices=["backbones"])
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("panels", nargs="+", metavar="TITLE=FILE", help="a panel: its title and results file")
    args = ap.parse_args(argv)
    records = {}
    for panel in args.panels:
        title, sep, path = panel.partition("=")
        if not sep:
            ap.error(f"expected TITLE=FILE, got {panel!r}")
        if os.path.isfile(path):
            records[title] = read_record(path)
    print(plot_backbones(records, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
