"""The paper's studies: every variant x backbone as a k-fold run, then tables and figures.

Studies (``STUDIES``), each a list of (label, config changes) applied to a base config:

* ``unified``: the cross-entropy baseline vs the whole unified approach (the demo);
* ``components`` (tables 1-4): baseline (cross-entropy, no attention, one stage at the
  final size) vs + SAS vs + unified loss vs + progressive resizing vs all three;
* ``loss`` (table 3, figure 3): cross-entropy, focal, Tversky, combo, unified;
* ``attention`` (table 5): spatial, channel, CBAM, SAS.

Outputs in ``out_dir``: one run folder per (model, variant), ``<study>.md`` (markdown
tables in the paper's layout, mean ± std over folds), ``<study>.csv`` (one row per fold)
and ``<study>_summary.csv``, ``curves_<model>.png`` (loss/DSC per epoch per variant) and
``overlays_<model>.png`` (ground truth vs each variant's prediction).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from unimri._atomic import atomic_write_text
from unimri.train.config import TrainConfig
from unimri.train.evaluate import METRIC_NAMES
from unimri.train.experiment import MARKER, ExperimentResult, prepare_out_dir, run_experiment

MODEL_TITLES = {"unet": "UNet", "fcn": "FCN", "rcnn": "RCNN", "segnet": "SegNet", "deeplabv3": "DeepLab-V3"}


def _final_stage_only(cfg: TrainConfig) -> dict[str, Any]:
    """One stage at the final size, with that stage's batch size and epochs (no resizing)."""
    return {"stages": [list(cfg.stage_sizes[-1])], "batch_size": cfg.stage_batch_sizes[-1],
            "epochs": cfg.stage_epochs[-1]}


Variant = Callable[[TrainConfig], dict[str, Any]]

DEMO_VARIANTS: list[tuple[str, Variant]] = [
    ("baseline (CE)", lambda c: {"loss": "ce", "attention": None, **_final_stage_only(c)}),
    ("unified approach", lambda c: {"loss": "unified", "attention": "sas"}),
]

STUDIES: dict[str, tuple[str, list[tuple[str, Variant]]]] = {
    "unified": ("Method", DEMO_VARIANTS),
    "components": ("Strategy", [
        ("baseline", lambda c: {"loss": "ce", "attention": None, **_final_stage_only(c)}),
        ("+ SAS", lambda c: {"loss": "ce", "attention": "sas", **_final_stage_only(c)}),
        ("+ unified loss", lambda c: {"loss": "unified", "attention": None, **_final_stage_only(c)}),
        ("+ progressive resizing", lambda c: {"loss": "ce", "attention": None}),
        ("all (unified approach)", lambda c: {"loss": "unified", "attention": "sas"}),
    ]),
    "loss": ("Loss", [
        ("cross-entropy", lambda c: {"loss": "ce"}),
        ("focal", lambda c: {"loss": "focal"}),
        ("Tversky", lambda c: {"loss": "tversky"}),
        ("combo", lambda c: {"loss": "combo"}),
        ("unified", lambda c: {"loss": "unified"}),
    ]),
    "attention": ("Attention mechanism", [
        ("spatial", lambda c: {"attention": "spatial"}),
        ("channel", lambda c: {"attention": "channel"}),
        ("hybrid (CBAM)", lambda c: {"attention": "cbam"}),
        ("SAS", lambda c: {"attention": "sas"}),
    ]),
}



@dataclass
class Cell:
    model: str
    variant: str
    result: ExperimentResult


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_").replace("__", "_")


def run_variants(base: TrainConfig, variants: Sequence[tuple[str, Variant]], models: Sequence[str],
                 out_dir: str, *, resume: bool = False, overwrite: bool = False,
                 study: str = "study", column: str = "Strategy") -> list[Cell]:
    """Run every (model, variant) k-fold experiment under ``out_dir`` and write the reports."""
    configs = []
    for model in models:
        for label, change in variants:
            cfg = base.replace(model=model)
            cfg = cfg.replace(**change(cfg)).validate()
            configs.append((model, label, cfg))
    prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
    if not resume:
        from unimri._atomic import atomic_write_json

        atomic_write_json(os.path.join(out_dir, MARKER), {"kind": f"ablate:{study}", "format": 1})
    cells = []
    for model, label, cfg in configs:
        run_dir = os.path.join(out_dir, f"{model}-{_slug(label)}")
        again = resume and os.path.isfile(os.path.join(run_dir, MARKER))
        print(f"== {study}: {model} / {label} -> {run_dir}", flush=True)
        cells.append(Cell(model, label, run_experiment(cfg, run_dir, resume=again, kind="train")))
    write_study_reports(cells, out_dir, study, column, base.dataset)
    return cells


def run_study(base: TrainConfig, study: str, models: Sequence[str], out_dir: str, **kw: Any) -> list[Cell]:
    if study not in STUDIES:
        raise ValueError(f"study: unknown study {study!r}; expected one of {sorted(STUDIES)}")
    column, variants = STUDIES[study]
    return run_variants(base, variants, models, out_dir, study=study, column=column, **kw)


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def study_table(cells: Sequence[Cell], column: str, dataset: str) -> str:
    """Markdown in the paper's layout (its table 5): Model | variant | IoU | DSC | Precision | Recall | Dataset."""
    lines = [f"| Model | {column} | " + " | ".join(METRIC_NAMES) + " | Dataset |",
             "|---|---|" + "---|" * len(METRIC_NAMES) + "---|"]
    last_model = None
    k = cells[0].result.config.folds if cells else 0
    for cell in cells:
        name = MODEL_TITLES.get(cell.model, cell.model) if cell.model != last_model else ""
        shown_dataset = os.path.basename(dataset.rstrip("/")) if cell.model != last_model else ""
        last_model = cell.model
        stats = cell.result.summary
        lines.append(f"| {name} | {cell.variant} | " + " | ".join(_fmt(*stats[m]) for m in METRIC_NAMES)
                     + f" | {shown_dataset} |")
    n = len(cells[0].result.folds) if cells else 0
    lines.append("")
    lines.append(f"Mean ± std over {n} fold(s) of {k}-fold cross-validation; metrics on foreground classes.")
    return "\n".join(lines) + "\n"


def study_csv(cells: Sequence[Cell], study: str, dataset: str) -> tuple[str, str]:
    """(per-fold CSV, summary CSV) texts."""
    folds, summary = io.StringIO(), io.StringIO()
    fw, sw = csv.writer(folds), csv.writer(summary)
    fw.writerow(["study", "dataset", "model", "variant", "fold", *METRIC_NAMES])
    sw.writerow(["study", "dataset", "model", "variant", "n_folds",
                 *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std"))])
    for cell in cells:
        for f in cell.result.folds:
            fw.writerow([study, dataset, cell.model, cell.variant, f["fold"], *(f"{f[m]:.6f}" for m in METRIC_NAMES)])
        stats = cell.result.summary
        sw.writerow([study, dataset, cell.model, cell.variant, len(cell.result.folds),
                     *(f"{v:.6f}" for m in METRIC_NAMES for v in stats[m])])
    return folds.getvalue(), summary.getvalue()


def write_study_reports(cells: Sequence[Cell], out_dir: str, study: str, column: str, dataset: str) -> None:
    from unimri.train.plots import plot_curves, plot_overlays

    table = study_table(cells, column, dataset)
    atomic_write_text(os.path.join(out_dir, f"{study}.md"), f"## {study} — {dataset}\n\n{table}")
    per_fold, summary = study_csv(cells, study, dataset)
    atomic_write_text(os.path.join(out_dir, f"{study}.csv"), per_fold)
    atomic_write_text(os.path.join(out_dir, f"{study}_summary.csv"), summary)
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        plot_curves({c.variant: c.result.histories for c in mine},
                    os.path.join(out_dir, f"curves_{model}.png"),
                    title=f"{MODEL_TITLES.get(model, model)} on {dataset}: loss and DSC per epoch")
        examples = _merge_examples(mine)
        if examples:
            plot_overlays(examples, os.path.join(out_dir, f"overlays_{model}.png"),
                          title=f"{MODEL_TITLES.get(model, model)}: ground truth (green) vs prediction (red)")


def _merge_examples(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Cases that every variant has an example prediction for, with all predictions."""
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
