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
from typing import Any, Callable, Sequence

from unimri._atomic import atomic_write_text
from unimri.train.config import TrainConfig
from unimri.train.experiment import MARKER, RUN_FORMAT, ExperimentResult, prepare_out_dir, run_experiment
from unimri.runtime.provenance import Stopwatch
from unimri.studies.quality import write_record
from unimri.studies.reports import (MODEL_TITLES, Cell, imbalance_csv, imbalance_record, study_comparisons,  # noqa: F401
                                    study_csv, study_record, study_table, write_imbalance_reports,
                                    write_study_reports)


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

# table 1 over every backbone and the λ sweep of figure 3f (unimri.studies.paper)
from unimri.studies import paper as _paper  # noqa: E402 (beside the studies it adds)

STUDIES["backbones"] = ("Method", DEMO_VARIANTS)
STUDIES["lambda"] = ("Unified loss λ", _paper.lambda_variants())
#: studies that write more than the common reports: study -> writer(cells, out_dir, dataset)
EXTRA_REPORTS: dict[str, Callable[..., Any]] = {"lambda": _paper.write_lambda_report}



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
    cells = run_variants(base, variants, models, out_dir, study=study, column=column, **kw)
    if study in EXTRA_REPORTS:
        EXTRA_REPORTS[study](cells, out_dir, base.dataset)
    from unimri.studies.attention_figures import write_attention_overlays

    write_attention_overlays(cells, out_dir)  # the overlays again, with attention maps
    return cells


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
    if any(cell.result.config.attention for cell in cells):
        from unimri.studies.attention_figures import add_attention, plot_overlays_with_attention

        gated = {cell.variant: models[cell.variant] for cell in cells if cell.result.config.attention}
        return plot_overlays_with_attention(add_attention(rows, chosen, gated), path, title=(
            f"{MODEL_TITLES.get(cells[0].model, cells[0].model)}, fold {fold} test cases: ground truth "
            "(green) vs prediction (red); top attention gate"))
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
