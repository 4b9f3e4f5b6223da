"""What a study produced (:class:`Cell`) and its reports: the table, CSV files, the quality
results file and the plots (:mod:`unimri.studies.ablation` runs the studies)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

from unimri._atomic import atomic_write_text
from unimri.runtime.metric_names import METRIC_NAMES
from unimri.studies.quality import fold_row, make_record, render_table, write_record
from unimri.studies.stats import Comparison, compare_study, fold_means, format_p, mean_std
from unimri.train.experiment import ExperimentResult

MODEL_TITLES = {"unet": "UNet", "fcn": "FCN", "rcnn": "RCNN", "segnet": "SegNet", "deeplabv3": "DeepLab-V3"}


@dataclass
class Cell:
    """One (model, variant) of a study: its nested-CV run per seed, as ``runs[seed] = result``."""

    model: str
    variant: str
    runs: dict[int, ExperimentResult]

    @property
    def result(self) -> ExperimentResult:
        """The first seed's run (what single-seed callers read)."""
        return self.runs[min(self.runs)]

    def values(self, metric: str) -> dict[tuple[int, int], float]:
        """{(fold, seed): test metric} over every run and outer fold."""
        return {(int(f["fold"]), seed): float(f[metric]) for seed, r in sorted(self.runs.items())
                for f in r.folds}

    def summary(self, metric: str) -> tuple[float, float]:
        """Mean ± population std over the test folds, each the mean of its seeds."""
        return mean_std(list(fold_means(self.values(metric)).values()))

    @property
    def histories(self) -> list[dict[str, Any]]:
        """Every run's epoch records, each tagged with its ``seed``."""
        return [{**h, "seed": seed} for seed, r in sorted(self.runs.items()) for h in r.histories]


def _baselines(cells: Sequence[Cell]) -> dict[str, Cell]:
    """The first cell of each model: the study's baseline."""
    first: dict[str, Cell] = {}
    for c in cells:
        first.setdefault(c.model, c)
    return first


def study_comparisons(cells: Sequence[Cell], metric: str = "DSC") -> dict[tuple[str, str], Comparison]:
    """{(model, variant): comparison with that model's baseline over the test folds}, Holm-corrected
    within each model's variants, for every non-baseline cell."""
    out = {}
    for model, base in _baselines(cells).items():
        mine = {c.variant: c.values(metric) for c in cells if c.model == model}
        for variant, comparison in compare_study(mine, base.variant).items():
            out[(model, variant)] = comparison
    return out


def study_record(cells: Sequence[Cell], study: str, column: str, dataset: str,
                 provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The quality results record (:mod:`unimri.studies.quality`) of a finished study."""
    rows = [fold_row(MODEL_TITLES.get(c.model, c.model), c.variant, seed, f)
            for c in cells for seed, r in sorted(c.runs.items()) for f in r.folds]
    cfg = cells[0].result.config if cells else None
    evaluation = {} if cfg is None else {
        "folds": cfg.folds, "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed_or_seed,
        "seeds": sorted({seed for c in cells for seed in c.runs})}
    return make_record(study, os.path.basename(dataset.rstrip("/")), "Model", column, rows, evaluation,
                       provenance or {})


def study_table(cells: Sequence[Cell], column: str, dataset: str, provenance: dict[str, Any] | None = None) -> str:
    """The markdown table of :func:`unimri.studies.quality.render_table` for these cells."""
    return render_table(study_record(cells, "study", column, dataset, provenance))


def study_csv(cells: Sequence[Cell], study: str, dataset: str) -> tuple[str, str]:
    """(per-run CSV: one row per test fold and seed, summary CSV: one row per cell with its
    comparison to the baseline)."""
    folds, summary = io.StringIO(), io.StringIO()
    fw, sw = csv.writer(folds), csv.writer(summary)
    fw.writerow(["study", "dataset", "model", "variant", "fold", "seed", "split", *METRIC_NAMES])
    sw.writerow(["study", "dataset", "model", "variant", "n_folds", "n_seeds",
                 *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")),
                 *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean_diff", "ci_low", "ci_high", "p", "p_holm")),
                 "note"])
    comparisons = {m: study_comparisons(cells, m) for m in METRIC_NAMES}
    for cell in cells:
        for (fold, seed), _ in sorted(cell.values("DSC").items()):
            f = next(x for x in cell.runs[seed].folds if int(x["fold"]) == fold)
            fw.writerow([study, dataset, cell.model, cell.variant, fold, seed, "test",
                         *(f"{f[m]:.6f}" for m in METRIC_NAMES)])
        row = [study, dataset, cell.model, cell.variant, len(fold_means(cell.values("DSC"))), len(cell.runs),
               *(f"{v:.6f}" for m in METRIC_NAMES for v in cell.summary(m))]
        dsc = comparisons["DSC"].get((cell.model, cell.variant))
        if dsc is None:
            row += [""] * (5 * len(METRIC_NAMES)) + ["baseline"]
        else:
            for m in METRIC_NAMES:
                c = comparisons[m][(cell.model, cell.variant)]
                row += [f"{c.mean_diff:.6f}", f"{c.ci[0]:.6f}", f"{c.ci[1]:.6f}", f"{c.test.p_value:.6g}",
                        f"{c.p_holm:.6g}"]
            row += [dsc.note]
        sw.writerow(row)
    return folds.getvalue(), summary.getvalue()


def write_study_reports(cells: Sequence[Cell], out_dir: str, study: str, column: str, dataset: str,
                        provenance: dict[str, Any] | None = None) -> None:
    """<study>.md, <study>_results.json, <study>.csv, <study>_summary.csv, bars_<model>.png,
    curves_<model>.png, overlays_<model>.png (and time_to_quality_<model>.png for the
    resizing study)."""
    from unimri.runtime.plots import plot_bars, plot_curves, plot_overlays, plot_time_to_quality
    record = study_record(cells, study, column, dataset, provenance)
    write_record(os.path.join(out_dir, f"{study}_results.json"), record)
    table = render_table(record)
    atomic_write_text(os.path.join(out_dir, f"{study}.md"), f"## {study} — {dataset}\n\n{table}")
    per_fold, summary = study_csv(cells, study, dataset)
    atomic_write_text(os.path.join(out_dir, f"{study}.csv"), per_fold)
    atomic_write_text(os.path.join(out_dir, f"{study}_summary.csv"), summary)
    comparisons = study_comparisons(cells)
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        title = MODEL_TITLES.get(model, model)
        plot_curves({c.variant: c.histories for c in mine}, os.path.join(out_dir, f"curves_{model}.png"),
                    title=f"{title} on {dataset}: loss and validation DSC per epoch")
        bars = [(c.variant, *c.summary("DSC"),
                 "baseline" if (model, c.variant) not in comparisons
                 else f"p={format_p(comparisons[(model, c.variant)])}") for c in mine]
        plot_bars(bars, os.path.join(out_dir, f"bars_{model}.png"),
                  title=f"{title} on {os.path.basename(dataset.rstrip('/'))}: {study} "
                        f"(test DSC, mean ± std over test folds)", ylabel="test DSC")
        if study == "resizing":
            plot_time_to_quality({c.variant: c.histories for c in mine},
                                 os.path.join(out_dir, f"time_to_quality_{model}.png"),
                                 title=f"{title} on {dataset}: validation DSC vs training wall time")
        examples = _merge_examples(mine)
        if examples:
            plot_overlays(examples, os.path.join(out_dir, f"overlays_{model}.png"),
                          title=f"{title}: ground truth (green) vs prediction (red)")


def _merge_examples(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Cases that every variant has an example prediction for (first seed), with all predictions."""
    if not cells or not cells[0].result.examples:
        return []
    merged = []
    for ex in cells[0].result.examples:
        preds = {}
        for cell in cells:
            hit = [e for e in cell.result.examples if e["case_id"] == ex["case_id"]]
            if not hit:
                break
            preds[cell.variant] = hit[0]["prediction"]
        else:
            merged.append({"case_id": ex["case_id"], "image": ex["image"], "label": ex["label"],
                           "predictions": preds})
    return merged


def imbalance_csv(results: dict[float, list[Cell]]) -> str:
    """One row per (model, method, fraction): folds, mean/std of test DSC and IoU, and the DSC
    comparison with the baseline (mean difference, CI, p, Holm p within the fraction)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "method", "fg_fraction", "n_folds", "DSC_mean", "DSC_std", "IoU_mean", "IoU_std",
                "DSC_mean_diff", "DSC_ci_low", "DSC_ci_high", "DSC_p", "DSC_p_holm", "note"])
    for f, cells in sorted(results.items(), reverse=True):
        comparisons = study_comparisons(cells)
        for c in cells:
            t = comparisons.get((c.model, c.variant))
            stats = [""] * 5 if t is None else [f"{t.mean_diff:.6f}", f"{t.ci[0]:.6f}", f"{t.ci[1]:.6f}",
                                                 f"{t.test.p_value:.6g}", f"{t.p_holm:.6g}"]
            w.writerow([c.model, c.variant, f"{f:g}", len(fold_means(c.values("DSC"))),
                        *(f"{v:.6f}" for m in ("DSC", "IoU") for v in c.summary(m)),
                        *stats, "baseline" if t is None else t.note])
    return buf.getvalue()


def imbalance_record(results: dict[float, list[Cell]], dataset: str,
                     provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sweep as one quality record: a group per (lesion fraction, model)."""
    records = {f: study_record(cells, "unified", "Method", dataset) for f, cells in results.items()}
    rows = [{**r, "group": f"{r['group']}, lesion fraction {f:g}"}
            for f, rec in sorted(records.items(), reverse=True) for r in rec["rows"]]
    evaluation = next(iter(records.values()))["evaluation"] if records else {}
    return make_record("imbalance", os.path.basename(dataset.rstrip("/")), "Model, lesion fraction", "Method",
                       rows, evaluation, provenance or {})


def write_imbalance_reports(results: dict[float, list[Cell]], out_dir: str, dataset: str,
                            provenance: dict[str, Any] | None = None) -> None:
    from unimri.runtime.plots import plot_imbalance

    atomic_write_text(os.path.join(out_dir, "imbalance.csv"), imbalance_csv(results))
    record = imbalance_record(results, dataset, provenance)
    write_record(os.path.join(out_dir, "imbalance_results.json"), record)
    atomic_write_text(os.path.join(out_dir, "imbalance.md"), f"## imbalance — {dataset}\n\n{render_table(record)}")
    models = dict.fromkeys(c.model for cells in results.values() for c in cells)
    for model in models:
        series: dict[str, list[tuple[float, float, float]]] = {}
        for f, cells in sorted(results.items()):
            for c in cells:
                if c.model == model:
                    series.setdefault(c.variant, []).append((f, *c.summary("DSC")))
        plot_imbalance(series, os.path.join(out_dir, f"imbalance_{model}.png"),
                       title=f"{MODEL_TITLES.get(model, model)} on {dataset}: test DSC as the lesion fraction falls")
