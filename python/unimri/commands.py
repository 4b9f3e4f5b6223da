"""What each ``unimri`` sub-command does (the parsers are in :mod:`unimri.cli`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

# flag -> (config key, parser of the text); defaults are TrainConfig's (shown in --help)
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model", "model", str, "backbone: unet, fcn, rcnn, segnet, deeplabv3 (default unet)"),
    ("--attention", "attention", lambda s: None if s.lower() in ("none", "") else s,
     "attention: none, sas, spatial, channel, cbam (default none)"),
    ("--loss", "loss", str, "loss: ce, focal, dice, tversky, focal_tversky, combo, dice_focal, "
                            "asymmetric_focal, asymmetric_focal_tversky, unified (default unified)"),
    ("--dataset", "dataset", str, "built-in dataset name (see `unimri datasets`) or a folder path "
                                  "(default phantom)"),
    ("--spatial-dims", "spatial_dims", int, "2 (slice-wise models) or 3 (volumetric) (default 2)"),
    ("--features", "features", int, "base width of the backbone (default: the model's own)"),
    ("--norm", "norm", str, "normalisation layers: batch, instance, group (default batch)"),
    ("--stages", "stages", str, "progressive-resizing input sizes, e.g. 128,256,512 or 96x128 "
                                "(default 128,256,512; one value = no resizing)"),
    ("--batch-size", "batch_size", str, "batch size, one value or one per stage e.g. 32,16,8 (default 32)"),
    ("--epochs", "epochs", str, "most epochs per stage, one value or one per stage (default 50)"),
    ("--patience", "patience", int, "early stopping: epochs without val-loss improvement (default 10)"),
    ("--lr", "lr", float, "SGD learning rate (default 1e-3)"),
    ("--momentum", "momentum", float, "SGD momentum (default 0.9)"),
    ("--weight-decay", "weight_decay", float, "SGD weight decay (default 5e-4)"),
    ("--schedule", "schedule", str, "learning-rate schedule per stage: none, cosine, poly, plateau"),
    ("--grad-clip", "grad_clip", float, "clip the gradient norm to this value (default off)"),
    ("--on-nonfinite", "on_nonfinite", str, "a NaN/inf training loss: error (stop the run) or end (end the "
                                            "fold's training at its best epoch, marked diverged; "
                                            "default error, ablate: end)"),
    ("--amp", "amp", str, "mixed precision: auto (bf16 on CUDA, none on CPU), bf16, fp16, none"),
    ("--folds", "folds", int, "k outer folds of nested cross-validation: each fold's test cases are "
                              "scored only (default 5)"),
    ("--fold", "fold_indices", str, "run only these folds, e.g. 0 or 0,2 (default all)"),
    ("--val-fraction", "val_fraction", float, "share of each fold's non-test cases (whole groups) held "
                                              "out for early stopping and the best epoch (default 0.2)"),
    ("--split-seed", "split_seed", int, "seed of the nested split (default: --seed)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--slice-axis", "slice_axis", int, "axis 2D models slice 3D volumes along (default -1)"),
    ("--patch-size", "patch_size", str, "3D models: training patch, e.g. 64 or 64x64x32 (default whole volume)"),
    ("--fg-fraction", "fg_fraction", float, "share of training slices drawn with foreground (default 0.5)"),
    ("--normalize", "normalize", str, "zscore, zscore-all, zscore-nonzero, none (default zscore)"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:1 (default auto)"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes (default 0)"),
    ("--loss-kwargs", "loss_kwargs", json.loads, "JSON dict of loss arguments, e.g. '{\"delta\": 0.7}'"),
    ("--dataset-kwargs", "dataset_kwargs", json.loads,
     "JSON dict for the dataset loader, e.g. '{\"num_cases\": 20}' for phantom"),
    ("--model-kwargs", "model_kwargs", json.loads, "JSON dict of extra model arguments"),
    ("--stop-after-epochs", "stop_after_epochs", int,
     "stop (as if killed) after this many epochs; continue later with --resume"),
]



def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def json_arg(text: str | None, flag: str) -> dict[str, Any]:
    """A JSON object given on the command line (``{}`` when absent)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from unimri.train.config import TrainConfig, parse_int_list, read_config_file, split_sizes

    values: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    parsers = {key: parse for _, key, parse, _ in _TRAIN_FLAGS}
    for key, parse in parsers.items():
        if hasattr(args, key):
            raw = getattr(args, key)
            try:
                values[key] = parse(raw)
            except (ValueError, json.JSONDecodeError) as exc:
                raise ValueError(f"{_flag(key)}: could not parse {raw!r} ({exc})") from None
    for key in ("augment", "progress", "channels_last", "compile"):
        if hasattr(args, key):
            values[key] = getattr(args, key)
    if hasattr(args, "replace_nonfinite"):  # a loader option, kept with the dataset's arguments
        values["dataset_kwargs"] = {**(values.get("dataset_kwargs") or {}),
                                    "replace_nonfinite": args.replace_nonfinite}
    for key in ("batch_size", "epochs"):  # "32" -> 32, "32,16" -> [32, 16]
        if isinstance(values.get(key), str):
            parts = parse_int_list(values[key], _flag(key))
            values[key] = parts[0] if len(parts) == 1 else parts
    for key in ("stages", "patch_size"):  # "64,128" -> [64, 128]; "96x128" stays a string per stage
        if isinstance(values.get(key), str):
            parts = split_sizes(values[key])
            values[key] = parts if key == "stages" or len(parts) > 1 else parts[0]
    if isinstance(values.get("fold_indices"), str):
        values["fold_indices"] = parse_int_list(values["fold_indices"], _flag("fold_indices"))
    return TrainConfig.from_dict(values).validate()


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from unimri.train.experiment import run_experiment

    if args.resume:
        from unimri.train.config import TrainConfig

        saved = os.path.join(args.resume, "config.json")
        if not os.path.isfile(saved):
            raise ValueError(f"--resume: {args.resume!r} is not a unimri run folder (no config.json)")
        base = json.load(open(saved))
        # only machinery may change on resume; the protocol comes from the saved config
        overrides = {k: getattr(args, k) for k in ("device", "num_workers", "progress", "stop_after_epochs",
                                                       "channels_last", "compile")
                     if hasattr(args, k)}
        cfg = TrainConfig.from_dict({**base, **overrides})
        if "num_workers" in overrides:
            cfg.num_workers = int(cfg.num_workers)
        if "stop_after_epochs" in overrides:
            cfg.stop_after_epochs = int(cfg.stop_after_epochs)
        cfg.validate()
        out = args.resume
    else:
        if not args.out:
            raise ValueError("--out: an output folder is required (or --resume RUN_FOLDER)")
        cfg = config_from_args(args)
        out = args.out
    t0 = time.perf_counter()
    result = run_experiment(cfg, out, resume=bool(args.resume), overwrite=args.overwrite)
    if _is_main():
        from unimri.train.experiment import fold_table

        print(fold_table(result)[1])
        print(f"run folder: {out}  ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from unimri._atomic import atomic_write_text
    from unimri.infer.evaluate import metric_table

    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"--out: {args.out!r} already exists; pass --overwrite to replace it")
    if args.pred or args.labels:
        result, names, source = _score_prediction_files(args)
    elif args.checkpoint:
        result, names, source = _score_checkpoint(args)
    else:
        raise ValueError("give --checkpoint (predict and score a dataset) or --pred and --labels "
                         "(score existing prediction files)")
    table = metric_table(result, names)
    print(table)
    if args.out:
        payload = {**source, "summary": result.summary, "per_class": result.per_class,
                   "per_case": result.per_case}
        if args.out.endswith(".json"):
            atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
        else:
            atomic_write_text(args.out, table)
        print(f"wrote {args.out}")
    return 0


def _score_prediction_files(args: argparse.Namespace) -> tuple[Any, None, dict[str, str]]:
    """``evaluate --pred DIR --labels DIR``: (EvalResult, class names, source record)."""
    from unimri.infer.evaluate import evaluate_files

    if not (args.pred and args.labels):
        raise ValueError("--pred and --labels go together: a folder of predictions and one of labels")
    if args.checkpoint or args.dataset or args.cases:
        raise ValueError("--pred/--labels score existing files; --checkpoint, --dataset and --cases "
                         "apply to evaluating a checkpoint")
    result, unmatched = evaluate_files(args.pred, args.labels, progress=not args.no_progress)
    if unmatched:
        print(f"note: {len(unmatched)} label file(s) have no prediction and are not scored: "
              f"{', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}", file=sys.stderr)
    return result, None, {"pred": args.pred, "labels": args.labels}


def _score_checkpoint(args: argparse.Namespace) -> tuple[Any, list[str] | None, dict[str, str]]:
    """``evaluate --checkpoint``: the checkpoint's model on a dataset's (chosen) cases."""
    from unimri.infer.evaluate import evaluate_model
    from unimri.infer.predict import load_trained_model
    from unimri.runtime import registry
    from unimri.train.distributed import resolve_device

    device = resolve_device(args.device)
    model, spec, state = load_trained_model(args.checkpoint, device, expected_model=args.model)
    cfg = state.get("config", {})
    dataset = args.dataset or cfg.get("dataset")
    kwargs = json_arg(args.dataset_kwargs, "--dataset-kwargs") if args.dataset_kwargs \
        else cfg.get("dataset_kwargs", {})
    if args.replace_nonfinite is not None:
        kwargs = {**kwargs, "replace_nonfinite": args.replace_nonfinite}
    cases = registry.load_cases(dataset, **kwargs)
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        by_id = {c.case_id: c for c in cases}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise ValueError(f"--cases: unknown case id(s) {missing[:5]} in dataset {dataset!r}")
        cases = [by_id[w] for w in wanted]
    _note_seen_cases(args.checkpoint, state, [c.case_id for c in cases])
    result = evaluate_model(model, cases, spec, device, spec.normalize, progress=not args.no_progress,
                            surface=True)
    names = cases[0].meta.get("classes") if cases and cases[0].meta else None
    return result, names, {"checkpoint": args.checkpoint, "dataset": dataset}


def _note_seen_cases(checkpoint: str, state: dict[str, Any], case_ids: list[str]) -> None:
    """Say on stderr when cases about to be scored trained or validated this checkpoint's model
    (its run folder's folds.json): such scores are not test scores."""
    folds_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), "folds.json")
    fold = state.get("fold")
    if fold is None or not os.path.isfile(folds_path):
        return
    try:
        split = json.load(open(folds_path))["folds"][int(fold)]
        seen = set(split["train"]) | set(split.get("val", []))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return
    overlap = [c for c in case_ids if c in seen]
    if overlap:
        print(f"note: {len(overlap)} of the {len(case_ids)} scored cases trained or validated this model "
              f"(fold {fold} of {folds_path}); only its test cases give a test score: "
              f"--cases {','.join(split['test'][:3])}{',...' if len(split['test']) > 3 else ''}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from unimri.train.distributed import resolve_device
    from unimri.infer.predict import DEFAULT_LABEL_PATTERNS, predict_path

    written = predict_path(args.checkpoint, args.input, args.output, overwrite=args.overwrite,
                           device=resolve_device(args.device), batch_size=args.batch_size,
                           overlap=args.overlap, progress=not args.no_progress,
                           output_format=args.output_format,
                           label_patterns=DEFAULT_LABEL_PATTERNS + tuple(args.skip or ()),
                           replace_nonfinite=args.replace_nonfinite, save_attention=args.save_attention)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from unimri.runtime import registry
    from unimri.studies.ablation import monai_peer_cells, run_imbalance_sweep, run_study
    from unimri.train.experiment import MARKER

    cfg = config_from_args(args, base={"on_nonfinite": "end"})  # a study reports a diverged run
    from unimri.studies.paper import STUDY_MODELS

    chosen = args.models if args.models is not None else ",".join(STUDY_MODELS.get(args.study, ("unet",)))
    models = [m.strip() for m in chosen.split(",") if m.strip()]
    for m in models:
        registry.check_model_name(m)
    if args.seeds < 1:
        raise ValueError(f"--seeds: expected >= 1, got {args.seeds}")
    seeds = list(range(cfg.seed, cfg.seed + args.seeds))
    if args.peer == "monai":
        from unimri.studies.peer import monai_available

        if not monai_available():
            print("unimri ablate: monai is not installed; running without the MONAI peer", file=sys.stderr)
            args.peer = "none"
    if args.study == "imbalance":
        fractions = [float(v) for v in args.fg_fractions.split(",") if v.strip()]
        run_imbalance_sweep(cfg, fractions, models, args.out, seeds=seeds, resume=args.resume,
                            overwrite=args.overwrite, jobs=args.jobs)
        print(open(os.path.join(args.out, "imbalance.md")).read())
        return 0
    studies = ["components", "loss", "attention"] if args.study == "all" else [args.study]
    cache: dict = {}
    for study in studies:
        out = args.out if len(studies) == 1 else os.path.join(args.out, study)
        extra = None
        if args.peer == "monai":
            def extra(cells, study=study, out=out):
                return monai_peer_cells(cells, study, out)
        # an interrupted --study all continues its started studies and starts the others
        resume = args.resume and (len(studies) == 1 or os.path.isfile(os.path.join(out, MARKER)))
        run_study(cfg, study, models, out, resume=resume, overwrite=args.overwrite, seeds=seeds,
                  cache=cache, extra_cells=extra, jobs=args.jobs)
        print(open(os.path.join(out, f"{study}.md")).read())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unimri.studies.ablation import DEMO_VARIANTS, polarity_overlays, run_variants
    from unimri.train.config import TrainConfig

    import torch

    torch.set_num_threads(args.threads or 1)  # a small model: one thread per run is fastest on a shared CPU
    jobs = args.jobs if args.jobs is not None else max(1, min(2, os.cpu_count() or 1))
    cfg = TrainConfig.from_dict({**DEMO_CONFIG, "progress": not args.no_progress and jobs == 1}).validate()
    t0 = time.perf_counter()
    print(f"unimri demo: UNet (width {cfg.features}) on the built-in phantom "
          f"({cfg.dataset_kwargs['num_cases']} cases of {cfg.dataset_kwargs['size']}x{cfg.dataset_kwargs['size']}), "
          f"baseline (cross-entropy, no attention, {sum(cfg.stage_epochs)} epochs at {cfg.stage_sizes[-1][0]}) vs "
          f"the unified approach (SAS + unified focal loss + progressive resizing "
          f"{' -> '.join(str(s[0]) for s in cfg.stage_sizes)}, {'+'.join(map(str, cfg.stage_epochs))} epochs); "
          f"{cfg.folds}-fold nested CV (test folds scored only, {cfg.val_fraction:g} of the rest for early "
          f"stopping); {jobs} run(s) at once; output -> {args.out}", flush=True)
    cells = run_variants(cfg, DEMO_VARIANTS, ["unet"], args.out, overwrite=args.overwrite,
                         study="demo", column="Method", jobs=jobs)
    overlays = os.path.join(args.out, "overlays_unet.png")
    polarity_overlays(cells, overlays)
    print()
    print(open(os.path.join(args.out, "demo.md")).read())  # the table format the docs are generated in
    print(f"plots: {os.path.join(args.out, 'curves_unet.png')}, {overlays}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


# the README demo (docs/experiments.md). Its recipe was fixed on the phantom of dataset seed 0, the
# development set, by the runs of benchmarks/tune_demo.py listed in docs/evaluation.md ("Demo
# recipe tuning"); the demo scores phantom seed 1, whose cases no tuning has seen
DEMO_CONFIG: dict[str, Any] = {
    "model": "unet", "features": 8, "dataset": "phantom",
    "dataset_kwargs": {"num_cases": 120, "size": 64, "seed": 1},
    "stages": [32, 64], "batch_size": 4, "epochs": [8, 16], "patience": 10,
    "lr": 0.4, "schedule": "cosine", "folds": 3, "val_fraction": 0.1, "seed": 0,
}


def cmd_datasets(args: argparse.Namespace) -> int:
    from unimri.data import BUILTINS, case_table, count_nonfinite, detect_layout, list_datasets, load_cases

    if args.path is None:
        rows = list_datasets()
        width = max(len(n) for n, _ in rows)
        for name, desc in rows:
            print(f"{name:<{width}}  {desc}")
        print("\nunimri datasets PATH shows the detected layout and every case of a folder")
        return 0
    kwargs = json_arg(args.dataset_kwargs, "--dataset-kwargs")
    if args.path in BUILTINS:
        title = f"built-in dataset {args.path!r}"
    else:
        layout = args.layout or detect_layout(args.path)
        kwargs["layout"] = layout
        title = f"{args.path}: {layout} layout"
    cases = load_cases(args.path, check_finite=False, **kwargs)  # count NaN/inf instead of refusing
    print(case_table(cases, f"{title}, {len(cases)} case(s)"))
    bad = [c.case_id for c in cases if count_nonfinite(c.image)]
    if bad:
        print(f"warning: {len(bad)} case(s) have NaN/inf voxels ({', '.join(bad[:5])}); training and "
              f"predict refuse them unless --replace-nonfinite VALUE is given", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from unimri.studies.throughput import measure_training_throughput

    rows = measure_training_throughput(model=args.model, attention=args.attention, loss=args.loss,
                                       size=args.size, batch_size=args.batch_size, steps=args.steps,
                                       features=args.features, device=args.device,
                                       backends=[b.strip() for b in args.backends.split(",")],
                                       amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    r0 = rows[0]
    print(f"{args.model}, batch {args.batch_size} x {args.size}^2, device {r0['device']}, amp {r0['amp']}, "
          f"channels-last {'on' if args.channels_last else 'off'}, compile {'on' if args.compile else 'off'}")
    print("| backend | images/s | ms/step |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['images_per_s']:.2f} | {r['ms_per_step']:.1f} |")
    return 0


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from unimri.train.convert import convert_checkpoint

    written = convert_checkpoint(args.old, args.new, trust=args.trust_this_file)
    print(f"wrote {written}")
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


