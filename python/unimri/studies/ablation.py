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

Every run is a nested cross-validation with the same outer test folds for every variant
and seed (the split comes from ``split_seed``, not the training seed), so the test fold is
the unit of comparison (:mod:`unimri.studies.stats`).

Outputs in ``out_dir``: one run folder per (model, variant[, seed]), ``<study>.md`` (the
table of :func:`unimri.studies.quality.render_table`: test scores, mean ± std over test
folds, the difference to the baseline with its bootstrap CI and the Holm-corrected
Wilcoxon p), ``<study>_results.json`` (the quality results file with provenance),
``<study>.csv`` (one row per fold and seed), ``<study>_summary.csv`` (per variant: mean,
std and the comparison with the baseline),
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
from unimri.train.experiment import MARKER, RUN_FORMAT, ExperimentResult, prepare_out_dir, run_experiment
from unimri.runtime.provenance import Stopwatch
from unimri.studies.quality import make_record, render_table, write_record
from unimri.studies.stats import Comparison, compare_study, fold_means, format_p, mean_std

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


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_").replace("__", "_")


def _config_key(cfg: TrainConfig) -> str:
    volatile = {"progress", "device", "num_workers", "stop_after_epochs"}
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in volatile}, sort_keys=True)


def run_variants(base: TrainConfig, variants: Sequence[tuple[str, Variant]], models: Sequence[str],
                 out_dir: str, *, resume: bool = False, overwrite: bool = False,
                 study: str = "study", column: str = "Strategy", seeds: Sequence[int] | None = None,
                 cache: dict[str, ExperimentResult] | None = None,
                 extra_cells: Callable[[list[Cell]], list[Cell]] | None = None, jobs: int = 1) -> list[Cell]:
    """Run every (model, variant, seed) k-fold experiment under ``out_dir`` and write the reports.

    Args:
        seeds: seeds to repeat every run with (default ``[base.seed]``). A seed sets the
            initial weights and the sampling; the nested split comes from
            ``base.split_seed`` (``base.seed`` when None) for every seed, so all runs share
            their outer test folds. One seed keeps the folder layout
            ``<model>-<variant>``; several give ``<model>-<variant>-seed<s>``.
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
    stopwatch = Stopwatch()
    configs = []
    for model in models:
        for label, change in variants:
            for seed in seeds:
                cfg = base.replace(model=model, seed=seed, split_seed=base.split_seed_or_seed)
                cfg = cfg.replace(**change(cfg)).validate()
                configs.append((model, label, seed, cfg))
    prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
    if not resume:
        from unimri._atomic import atomic_write_json

        atomic_write_json(os.path.join(out_dir, MARKER), {"kind": f"ablate:{study}", "format": RUN_FORMAT})
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
    write_study_reports(out, out_dir, study, column, base.dataset, provenance=stopwatch.record())
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
    rows = [{"group": MODEL_TITLES.get(c.model, c.model), "method": c.variant, "fold": int(f["fold"]),
             "seed": seed, **{m: float(f[m]) for m in METRIC_NAMES}}
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

        atomic_write_json(os.path.join(out_dir, MARKER), {"kind": "ablate:imbalance", "format": RUN_FORMAT})
    stopwatch = Stopwatch()
    column, variants = STUDIES["unified"]
    results: dict[float, list[Cell]] = {}
    for f in fractions:
        cfg = base.replace(dataset_kwargs={**base.dataset_kwargs, "fg_fraction": f})
        sub = os.path.join(out_dir, f"fg{f:g}")
        again = resume and os.path.isfile(os.path.join(sub, MARKER))
        results[f] = run_variants(cfg, variants, models, sub, resume=again, study="unified", column=column,
                                  seeds=seeds, jobs=jobs)
    write_imbalance_reports(results, out_dir, base.dataset, stopwatch.record())
    return results


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

    Takes the first ``n_dark`` test cases of ``fold`` (in split order) that hold a
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
    test_ids = json.load(open(os.path.join(first.out_dir, "folds.json")))["folds"][fold]["test"]
    test = [cases[i] for i in test_ids]
    if not any((c.meta or {}).get("lesions") for c in test):
        return None
    chosen = [c for c in test if _has_polarity(c, True)][:n_dark]
    chosen += [c for c in test if _has_polarity(c, False) and not _has_polarity(c, True)][:n_bright]
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
                                           "test cases: ground truth (green) vs prediction (red)")


def time_to_quality_report(runs: dict[str, Sequence[str]], out_dir: str, name: str = "time_to_quality",
                           title: str = "") -> str:
    """Time-to-quality plot and CSV from finished run folders, without training again.

    ``runs[label]`` lists run folders (one per seed) of that schedule, e.g. the
    components study's "SAS + unified loss" (one stage) and "all" (progressive resizing)
    runs. Writes ``<name>.png`` (validation DSC against cumulative training time — CPU time
    when the runs logged it, see :func:`unimri.runtime.plots.epoch_clock` — mean over seeds ×
    folds), ``<name>.csv`` (label, epoch, seconds, val_dsc) and ``<name>.json`` (the curves
    with the runs' provenance, for :func:`unimri.studies.quality.render_time_to_quality`) to
    ``out_dir``; returns the PNG path. The curves are validation curves (early-stopping
    cases), not test scores.
    """
    from unimri.train.experiment import load_result
    from unimri.runtime.plots import epoch_clock, plot_time_to_quality, time_to_quality_curve

    from unimri.studies.collect import merged_provenance
    from unimri.studies.quality import TTQ_FORMAT

    histories, results = {}, []
    for label, dirs in runs.items():
        loaded = [load_result(d) for d in dirs]
        results += loaded
        histories[label] = [{**h, "seed": i} for i, r in enumerate(loaded) for h in r.histories]
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
    curves = {}
    for label, records in histories.items():
        t, dsc = time_to_quality_curve(records, clock)
        curves[label] = {"time": [float(v) for v in t], "val_dsc": [float(v) for v in dsc]}
    write_record(os.path.join(out_dir, f"{name}.json"), {"format": TTQ_FORMAT, "clock": clock, "curves": curves,
                                                         "provenance": merged_provenance(results)})
    return plot_time_to_quality(histories, os.path.join(out_dir, f"{name}.png"), title=title)
