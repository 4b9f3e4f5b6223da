"""The paper's studies: every variant x backbone x seed as a k-fold run, then tables,
paired statistics and figures.

Studies (``STUDIES``), each a list of (label, config changes) applied to a base config;
the first variant is the baseline the others are tested against:

* ``unified``: the cross-entropy baseline vs the whole unified approach (the demo);
* ``components`` (tables 1-4): baseline (cross-entropy, no attention, one stage at the
  final size with the epochs of all stages) and every combination of SAS, unified loss
  and progressive resizing;
* ``loss`` (table 3, figure 3): cross-entropy, focal, Dice, Tversky, focal Tversky,
  combo, unified;
* ``attention`` (table 5): none, spatial, channel, CBAM, SAS;
* ``resizing``: one stage at the final size vs progressive resizing, same total epochs
  (time to quality).

:func:`run_imbalance_sweep` runs ``unified`` over phantom lesion fractions;
:func:`monai_peer_cells` adds the MONAI peer (:mod:`unimri.studies.peer`).

Outputs in ``out_dir``: one run folder per (model, variant[, seed]), ``<study>.md``
(markdown tables in the paper's layout, mean ± std over seeds × folds, optionally the
Wilcoxon p against the baseline), ``<study>.csv`` (one row per seed and fold),
``<study>_summary.csv`` (mean, std, median difference and p per metric),
``bars_<model>.png``, ``curves_<model>.png``, ``overlays_<model>.png`` and, for
``resizing``, ``time_to_quality_<model>.png``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from unimri._atomic import atomic_write_text
from unimri.train.config import TrainConfig
from unimri.runtime.scoring import METRIC_NAMES
from unimri.train.experiment import MARKER, ExperimentResult, prepare_out_dir, run_experiment
from unimri.studies.stats import PairedTest, format_p, mean_std, paired_wilcoxon

MODEL_TITLES = {"unet": "UNet", "fcn": "FCN", "rcnn": "RCNN", "segnet": "SegNet", "deeplabv3": "DeepLab-V3"}


def _final_stage_only(cfg: TrainConfig) -> dict[str, Any]:
    """One stage at the final size with that stage's batch size and the epochs of all stages
    together (no resizing, same epoch budget: each epoch then costs the most)."""
    final = cfg.stage_sizes[-1]
    # a long-side stage stays one: an exact list would squash non-square images
    stage = final[0] if final.keep_aspect else list(final)
    return {"stages": [stage], "batch_size": cfg.stage_batch_sizes[-1],
            "epochs": sum(cfg.stage_epochs)}


Variant = Callable[[TrainConfig], dict[str, Any]]

DEMO_VARIANTS: list[tuple[str, Variant]] = [
    ("baseline (CE)", lambda c: {"loss": "ce", "attention": None, **_final_stage_only(c)}),
    ("unified approach", lambda c: {"loss": "unified", "attention": "sas"}),
]

def _combo(sas: bool, unified: bool, resizing: bool) -> Variant:
    """Components-study variant: each part on or off (off = CE / no attention / one stage)."""
    def change(c: TrainConfig) -> dict[str, Any]:
        out: dict[str, Any] = {"loss": "unified" if unified else "ce", "attention": "sas" if sas else None}
        if not resizing:
            out.update(_final_stage_only(c))
        return out
    return change


STUDIES: dict[str, tuple[str, list[tuple[str, Variant]]]] = {
    "unified": ("Method", DEMO_VARIANTS),
    "components": ("Strategy", [
        ("baseline", _combo(False, False, False)),
        ("+ SAS", _combo(True, False, False)),
        ("+ unified loss", _combo(False, True, False)),
        ("+ progressive resizing", _combo(False, False, True)),
        ("SAS + unified loss", _combo(True, True, False)),
        ("SAS + resizing", _combo(True, False, True)),
        ("unified loss + resizing", _combo(False, True, True)),
        ("all (unified approach)", _combo(True, True, True)),
    ]),
    "loss": ("Loss", [
        ("cross-entropy", lambda c: {"loss": "ce"}),
        ("focal", lambda c: {"loss": "focal"}),
        ("Dice", lambda c: {"loss": "dice"}),
        ("Tversky", lambda c: {"loss": "tversky"}),
        ("focal Tversky", lambda c: {"loss": "focal_tversky"}),
        ("combo", lambda c: {"loss": "combo"}),
        ("unified", lambda c: {"loss": "unified"}),
    ]),
    "attention": ("Attention mechanism", [
        ("none", lambda c: {"attention": None}),
        ("spatial", lambda c: {"attention": "spatial"}),
        ("channel", lambda c: {"attention": "channel"}),
        ("hybrid (CBAM)", lambda c: {"attention": "cbam"}),
        ("SAS", lambda c: {"attention": "sas"}),
    ]),
    # time to quality: same model, loss and total epochs, with and without the low-resolution stages
    "resizing": ("Schedule", [
        ("single stage", lambda c: _final_stage_only(c)),
        ("progressive resizing", lambda c: {}),
    ]),
}



@dataclass
class Cell:
    """One (model, variant) of a study: its k-fold run per seed, as ``runs[(seed)] = result``."""

    model: str
    variant: str
    runs: dict[int, ExperimentResult]

    @property
    def result(self) -> ExperimentResult:
        """The first seed's run (what single-seed callers read)."""
        return self.runs[min(self.runs)]

    def values(self, metric: str) -> dict[tuple[int, int], float]:
        """{(seed, fold): metric} over every run and fold."""
        return {(seed, int(f["fold"])): float(f[metric]) for seed, r in sorted(self.runs.items())
                for f in r.folds}

    def summary(self, metric: str) -> tuple[float, float]:
        """Mean ± population std over all (seed, fold) runs."""
        return mean_std(list(self.values(metric).values()))

    @property
    def histories(self) -> list[dict[str, Any]]:
        """Every run's epoch records, each tagged with its ``seed``."""
        return [{**h, "seed": seed} for seed, r in sorted(self.runs.items()) for h in r.histories]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_").replace("__", "_")


def _config_key(cfg: TrainConfig) -> str:
    volatile = {"progress", "device", "num_workers", "stop_after_epochs"}
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in volatile}, sort_keys=True)


def run_variants(base: TrainConfig, variants: Sequence[tuple[str, Variant]], models: Sequence[str],
                 out_dir: str, *, resume: bool = False, overwrite: bool = False,
                 study: str = "study", column: str = "Strategy", seeds: Sequence[int] | None = None,
                 stats: bool = False, cache: dict[str, ExperimentResult] | None = None,
                 extra_cells: Callable[[list[Cell]], list[Cell]] | None = None, jobs: int = 1) -> list[Cell]:
    """Run every (model, variant, seed) k-fold experiment under ``out_dir`` and write the reports.

    Args:
        seeds: seeds to repeat every run with (default ``[base.seed]``). A seed sets the
            k-fold split, the initial weights and the sampling, so variants with the same
            seed are paired on the same folds. One seed keeps the folder layout
            ``<model>-<variant>``; several give ``<model>-<variant>-seed<s>``.
        stats: add the Wilcoxon test of each variant against the first (the baseline).
        cache: configurations already run in this process (``--study all``): an identical
            configuration reuses the earlier run instead of training again.
        extra_cells: called with the cells once all runs are done; returns further cells
            (e.g. a peer method) to add to the reports.
        jobs: runs trained at once, each in its own process with one intra-op thread
            (results are identical to ``jobs=1``: every run is single-threaded and seeded).
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive integer, got {jobs!r}")
    seeds = [int(base.seed)] if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {seeds!r}")
    configs = []
    for model in models:
        for label, change in variants:
            for seed in seeds:
                cfg = base.replace(model=model, seed=seed)
                cfg = cfg.replace(**change(cfg)).validate()
                configs.append((model, label, seed, cfg))
    prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
    if not resume:
        from unimri._atomic import atomic_write_json

        atomic_write_json(os.path.join(out_dir, MARKER), {"kind": f"ablate:{study}", "format": 1})
    plan, pending = [], {}
    for model, label, seed, cfg in configs:
        name = f"{model}-{_slug(label)}" + (f"-seed{seed}" if len(seeds) > 1 else "")
        key = _config_key(cfg)
        if (cache is not None and key in cache) or key in pending:
            plan.append((model, label, seed, key, None))
            continue
        run_dir = os.path.join(out_dir, name)
        pending[key] = (cfg, run_dir, resume and os.path.isfile(os.path.join(run_dir, MARKER)),
                        f"{model} / {label} / seed {seed}")
        plan.append((model, label, seed, key, run_dir))
    done = _run_all(pending, jobs, study)
    if cache is not None:
        cache.update(done)
        done = cache
    cells: dict[tuple[str, str], Cell] = {}
    for model, label, seed, key, run_dir in plan:
        if run_dir is None:
            print(f"== {study}: {model} / {label} / seed {seed}: same configuration as "
                  f"{done[key].out_dir}, reused", flush=True)
        cells.setdefault((model, label), Cell(model, label, {})).runs[seed] = done[key]
    out = list(cells.values())
    if extra_cells is not None:
        out += extra_cells(out)
    write_study_reports(out, out_dir, study, column, base.dataset, stats=stats)
    return out


def _run_one(cfg: TrainConfig, run_dir: str, again: bool) -> ExperimentResult:
    """One k-fold run in a worker process (one intra-op thread, no progress bars)."""
    import torch

    torch.set_num_threads(1)
    return run_experiment(cfg.replace(progress=False), run_dir, resume=again, kind="train")


def _run_all(pending: dict[str, tuple[TrainConfig, str, bool, str]], jobs: int,
             study: str) -> dict[str, ExperimentResult]:
    """Run every pending (config, run folder, resume, name) — sequentially or in ``jobs`` processes."""
    done: dict[str, ExperimentResult] = {}
    if jobs == 1 or len(pending) < 2:
        for key, (cfg, run_dir, again, name) in pending.items():
            print(f"== {study}: {name} -> {run_dir}", flush=True)
            done[key] = run_experiment(cfg, run_dir, resume=again, kind="train")
        return done
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, cfg, run_dir, again): key
                   for key, (cfg, run_dir, again, _) in pending.items()}
        print(f"== {study}: {len(futures)} run(s) in {jobs} processes", flush=True)
        for fut in as_completed(futures):
            key = futures[fut]
            done[key] = fut.result()
            print(f"== {study}: {pending[key][3]} finished -> {pending[key][1]} "
                  f"(DSC {done[key].summary['DSC'][0]:.3f})", flush=True)
    return done


def run_study(base: TrainConfig, study: str, models: Sequence[str], out_dir: str, **kw: Any) -> list[Cell]:
    """Run one of :data:`STUDIES` (its variants for every model); see :func:`run_variants`."""
    if study not in STUDIES:
        raise ValueError(f"study: unknown study {study!r}; expected one of {sorted(STUDIES)}")
    column, variants = STUDIES[study]
    return run_variants(base, variants, models, out_dir, study=study, column=column, **kw)


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _baselines(cells: Sequence[Cell]) -> dict[str, Cell]:
    """The first cell of each model: the study's baseline."""
    first: dict[str, Cell] = {}
    for c in cells:
        first.setdefault(c.model, c)
    return first


def study_tests(cells: Sequence[Cell], metric: str = "DSC") -> dict[tuple[str, str], PairedTest]:
    """{(model, variant): Wilcoxon test vs that model's baseline} for every non-baseline cell."""
    base = _baselines(cells)
    return {(c.model, c.variant): paired_wilcoxon(c.values(metric), base[c.model].values(metric))
            for c in cells if c is not base[c.model]}


def study_table(cells: Sequence[Cell], column: str, dataset: str, stats: bool = False) -> str:
    """Markdown in the paper's layout (its table 5): Model | variant | IoU | DSC | Precision | Recall | Dataset.

    With ``stats`` a column gives the two-sided Wilcoxon signed-rank p-value of the
    variant's DSC against the model's first variant over (seed, fold) pairs.
    """
    tests = study_tests(cells) if stats else {}
    head = f"| Model | {column} | " + " | ".join(METRIC_NAMES) + (" | p (DSC vs baseline)" if stats else "")
    lines = [head + " | Dataset |", "|---|---|" + "---|" * (len(METRIC_NAMES) + int(stats)) + "---|"]
    last_model = None
    for cell in cells:
        name = MODEL_TITLES.get(cell.model, cell.model) if cell.model != last_model else ""
        shown_dataset = os.path.basename(dataset.rstrip("/")) if cell.model != last_model else ""
        last_model = cell.model
        row = f"| {name} | {cell.variant} | " + " | ".join(_fmt(*cell.summary(m)) for m in METRIC_NAMES)
        if stats:
            test = tests.get((cell.model, cell.variant))
            row += " | " + (format_p(test) if test is not None else "(baseline)")
        lines.append(row + f" | {shown_dataset} |")
    if cells:
        cfg = cells[0].result.config
        n_seeds = len(cells[0].runs)
        n_folds = len(cells[0].result.folds)
        lines.append("")
        lines.append(f"Mean ± std over {n_seeds * n_folds} run(s): {n_seeds} seed(s) × {n_folds} fold(s) of "
                     f"{cfg.folds}-fold cross-validation; metrics on foreground classes."
                     + (" p: two-sided Wilcoxon signed-rank test over (seed, fold) pairs." if stats else ""))
    return "\n".join(lines) + "\n"


def study_csv(cells: Sequence[Cell], study: str, dataset: str) -> tuple[str, str]:
    """(per-run CSV: one row per seed and fold, summary CSV: one row per cell with the tests)."""
    folds, summary = io.StringIO(), io.StringIO()
    fw, sw = csv.writer(folds), csv.writer(summary)
    fw.writerow(["study", "dataset", "model", "variant", "seed", "fold", *METRIC_NAMES])
    sw.writerow(["study", "dataset", "model", "variant", "n_runs",
                 *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")),
                 *(f"{m}_{s}" for m in METRIC_NAMES for s in ("median_diff", "wilcoxon_p")),
                 "n_pairs", "note"])
    tests = {m: study_tests(cells, m) for m in METRIC_NAMES}
    for cell in cells:
        for seed, r in sorted(cell.runs.items()):
            for f in r.folds:
                fw.writerow([study, dataset, cell.model, cell.variant, seed, f["fold"],
                             *(f"{f[m]:.6f}" for m in METRIC_NAMES)])
        row = [study, dataset, cell.model, cell.variant, len(cell.values("DSC")),
               *(f"{v:.6f}" for m in METRIC_NAMES for v in cell.summary(m))]
        dsc = tests["DSC"].get((cell.model, cell.variant))
        if dsc is None:
            row += [""] * (2 * len(METRIC_NAMES)) + ["", "baseline"]
        else:
            for m in METRIC_NAMES:
                t = tests[m][(cell.model, cell.variant)]
                row += [f"{t.median_diff:.6f}", f"{t.p_value:.6g}"]
            row += [dsc.n_pairs, dsc.note]
        sw.writerow(row)
    return folds.getvalue(), summary.getvalue()


def write_study_reports(cells: Sequence[Cell], out_dir: str, study: str, column: str, dataset: str,
                        stats: bool = False) -> None:
    """<study>.md, <study>.csv, <study>_summary.csv, bars_<model>.png, curves_<model>.png,
    overlays_<model>.png (and time_to_quality_<model>.png for the resizing study)."""
    from unimri.runtime.plots import plot_bars, plot_curves, plot_overlays, plot_time_to_quality

    table = study_table(cells, column, dataset, stats=stats)
    atomic_write_text(os.path.join(out_dir, f"{study}.md"), f"## {study} — {dataset}\n\n{table}")
    per_fold, summary = study_csv(cells, study, dataset)
    atomic_write_text(os.path.join(out_dir, f"{study}.csv"), per_fold)
    atomic_write_text(os.path.join(out_dir, f"{study}_summary.csv"), summary)
    tests = study_tests(cells) if stats else {}
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        title = MODEL_TITLES.get(model, model)
        plot_curves({c.variant: c.histories for c in mine}, os.path.join(out_dir, f"curves_{model}.png"),
                    title=f"{title} on {dataset}: loss and DSC per epoch")
        if stats:
            bars = [(c.variant, *c.summary("DSC"), tests.get((model, c.variant))) for c in mine]
            plot_bars(bars, os.path.join(out_dir, f"bars_{model}.png"),
                      title=f"{title} on {os.path.basename(dataset.rstrip('/'))}: {study} "
                            f"(mean ± std over seeds × folds)", ylabel="DSC")
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


def run_imbalance_sweep(base: TrainConfig, fractions: Sequence[float], models: Sequence[str], out_dir: str,
                        *, seeds: Sequence[int] | None = None, resume: bool = False,
                        overwrite: bool = False, jobs: int = 1) -> dict[float, list[Cell]]:
    """Baseline (CE) vs the unified approach as the phantom's lesion fraction falls.

    For each fraction ``f`` the ``unified`` study runs with ``dataset_kwargs["fg_fraction"]
    = f`` (every case's lesion target area is exactly ``f`` of the image) in
    ``out_dir/fg<f>``; then ``imbalance.csv`` (one row per model, method, fraction: mean,
    std, Wilcoxon p of DSC vs the baseline) and ``imbalance_<model>.png`` (DSC against the
    fraction, log scale, error bars = std over seeds × folds) are written to ``out_dir``.
    """
    if base.dataset != "phantom":
        raise ValueError(f"dataset: the imbalance sweep varies the built-in phantom's fg_fraction, "
                         f"got dataset {base.dataset!r}")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 0.3 for f in fractions):
        raise ValueError(f"fractions: expected values in (0, 0.3], got {fractions!r}")
    prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
    if not resume:
        from unimri._atomic import atomic_write_json

        atomic_write_json(os.path.join(out_dir, MARKER), {"kind": "ablate:imbalance", "format": 1})
    column, variants = STUDIES["unified"]
    results: dict[float, list[Cell]] = {}
    for f in fractions:
        cfg = base.replace(dataset_kwargs={**base.dataset_kwargs, "fg_fraction": f})
        sub = os.path.join(out_dir, f"fg{f:g}")
        again = resume and os.path.isfile(os.path.join(sub, MARKER))
        results[f] = run_variants(cfg, variants, models, sub, resume=again, study="unified", column=column,
                                  seeds=seeds, stats=True, jobs=jobs)
    write_imbalance_reports(results, out_dir, base.dataset)
    return results


def imbalance_csv(results: dict[float, list[Cell]]) -> str:
    """One row per (model, method, fraction): n, mean/std of DSC and IoU, Wilcoxon p of DSC."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "method", "fg_fraction", "n_runs", "DSC_mean", "DSC_std", "IoU_mean", "IoU_std",
                "DSC_median_diff", "DSC_wilcoxon_p", "note"])
    for f, cells in sorted(results.items(), reverse=True):
        tests = study_tests(cells)
        for c in cells:
            t = tests.get((c.model, c.variant))
            w.writerow([c.model, c.variant, f"{f:g}", len(c.values("DSC")),
                        *(f"{v:.6f}" for m in ("DSC", "IoU") for v in c.summary(m)),
                        "" if t is None else f"{t.median_diff:.6f}", "" if t is None else f"{t.p_value:.6g}",
                        "baseline" if t is None else t.note])
    return buf.getvalue()


def write_imbalance_reports(results: dict[float, list[Cell]], out_dir: str, dataset: str) -> None:
    from unimri.runtime.plots import plot_imbalance

    atomic_write_text(os.path.join(out_dir, "imbalance.csv"), imbalance_csv(results))
    models = dict.fromkeys(c.model for cells in results.values() for c in cells)
    for model in models:
        series: dict[str, list[tuple[float, float, float]]] = {}
        for f, cells in sorted(results.items()):
            for c in cells:
                if c.model == model:
                    series.setdefault(c.variant, []).append((f, *c.summary("DSC")))
        plot_imbalance(series, os.path.join(out_dir, f"imbalance_{model}.png"),
                       title=f"{MODEL_TITLES.get(model, model)} on {dataset}: DSC as the lesion fraction falls")


# the run the MONAI peer gets its wall-time budget from, per study
PEER_REFERENCE = {"unified": "unified approach", "components": "all (unified approach)"}


def monai_peer_cells(cells: Sequence[Cell], study: str, out_dir: str) -> list[Cell]:
    """The MONAI peer (:mod:`unimri.studies.peer`) for each UNet seed of a finished study.

    It trains on the same folds as the study's unified-approach runs, for the same training
    time per fold — CPU time when those runs logged it (one thread per run, so other load
    on the machine does not shift the budget), else wall time — in
    ``out_dir/unet-monai_peer[-seed<s>]``. Returns [] when the study has no UNet
    unified-approach cell.
    """
    from unimri.studies.peer import PEER_LABEL, fold_budgets, run_monai_peer
    from unimri.runtime.plots import epoch_clock

    label = PEER_REFERENCE.get(study)
    ref = [c for c in cells if c.model == "unet" and c.variant == label]
    if not ref:
        return []
    peer = Cell("unet", PEER_LABEL, {})
    for seed, result in sorted(ref[0].runs.items()):
        name = "unet-monai_peer" + (f"-seed{seed}" if len(ref[0].runs) > 1 else "")
        clock = epoch_clock(result.histories)
        print(f"== {study}: unet / {PEER_LABEL} / seed {seed} ({clock} of {result.out_dir})", flush=True)
        peer.runs[seed] = run_monai_peer(result.config, os.path.join(out_dir, name), fold_budgets(result, clock),
                                         overwrite=True, clock="cpu" if clock == "cpu_seconds" else "wall")
    return [peer]


def _has_polarity(case: Any, dark: bool) -> bool:
    """Whether a phantom case has a class-1 lesion of that polarity (``meta["lesions"]``)."""
    return any(l["class"] == 1 and (l["contrast"] < 0) == dark for l in (case.meta or {}).get("lesions", []))


def polarity_overlays(cells: Sequence[Cell], path: str, fold: int = 0, n_dark: int = 2,
                      n_bright: int = 1) -> str | None:
    """Overlays of ground truth vs each cell's prediction on phantom cases of both polarities.

    Takes the first ``n_dark`` validation cases of ``fold`` (in split order) that hold a
    dark (hypo-intense) lesion and the first ``n_bright`` that hold only bright ones — a
    fixed rule, not a pick of good-looking cases — and predicts them with each cell's
    ``fold<k>/model.pt`` (first seed). Returns the path, or None when the dataset records
    no lesion polarities (not the phantom).
    """
    from unimri.runtime.scoring import normalized_image
    from unimri.train.experiment import load_experiment_cases
    from unimri.runtime.plots import plot_overlays
    from unimri.infer.predict import load_trained_model
    from unimri.runtime.inference import predict_labels

    if not cells:
        return None
    first = cells[0].result
    cases = {c.case_id: c for c in load_experiment_cases(first.config)}
    val_ids = json.load(open(os.path.join(first.out_dir, "folds.json")))["folds"][fold]["val"]
    val = [cases[i] for i in val_ids]
    if not any((c.meta or {}).get("lesions") for c in val):
        return None
    chosen = [c for c in val if _has_polarity(c, True)][:n_dark]
    chosen += [c for c in val if _has_polarity(c, False) and not _has_polarity(c, True)][:n_bright]
    models = {cell.variant: load_trained_model(os.path.join(cell.result.out_dir, f"fold{fold}", "model.pt"))[:2]
              for cell in cells}
    rows = []
    for case in chosen:
        preds = {}
        for variant, (model, spec) in models.items():
            preds[variant] = predict_labels(model, normalized_image(case, spec.normalize), spec).numpy()
        polarity = "dark + bright" if _has_polarity(case, False) and _has_polarity(case, True) else (
            "dark" if _has_polarity(case, True) else "bright")
        rows.append({"case_id": f"{case.case_id} ({polarity})", "image": case.image[0], "label": case.label,
                     "predictions": preds})
    return plot_overlays(rows, path, title=f"{MODEL_TITLES.get(cells[0].model, cells[0].model)}, fold {fold} "
                                           "validation cases: ground truth (green) vs prediction (red)")


def time_to_quality_report(runs: dict[str, Sequence[str]], out_dir: str, name: str = "time_to_quality",
                           title: str = "") -> str:
    """Time-to-quality plot and CSV from finished run folders, without training again.

    ``runs[label]`` lists run folders (one per seed) of that schedule, e.g. the
    components study's "SAS + unified loss" (one stage) and "all" (progressive resizing)
    runs. Writes ``<name>.png`` (validation DSC against cumulative training time — CPU time
    when the runs logged it, see :func:`unimri.runtime.plots.epoch_clock` — mean over seeds ×
    folds) and ``<name>.csv`` (label, epoch, seconds, val_dsc) to
    ``out_dir``; returns the PNG path.
    """
    from unimri.train.experiment import load_result
    from unimri.runtime.plots import epoch_clock, plot_time_to_quality, time_to_quality_curve

    histories = {}
    for label, dirs in runs.items():
        histories[label] = [{**h, "seed": i} for i, d in enumerate(dirs) for h in load_result(d).histories]
    clock = epoch_clock([r for records in histories.values() for r in records])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["schedule", "epoch", f"{clock}_mean", "val_dsc_mean"])
    for label, records in histories.items():
        t, dsc = time_to_quality_curve(records, clock)
        for e, (ti, di) in enumerate(zip(t, dsc)):
            w.writerow([label, e + 1, f"{ti:.3f}", f"{di:.6f}"])
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, f"{name}.csv"), buf.getvalue())
    return plot_time_to_quality(histories, os.path.join(out_dir, f"{name}.png"), title=title)
