"""The ``unimri`` command (also ``python -m unimri``).

    unimri demo                                  # 5-minute baseline-vs-unified demo on phantom
    unimri datasets                              # built-in datasets and folder layouts
    unimri datasets path/to/folder               # the detected layout and a table of its cases
    unimri train --model unet --attention sas --loss unified --dataset phantom \\
                 --stages 128,256,512 --folds 5 --out runs/unet
    unimri train --resume runs/unet              # continue a killed run exactly
    unimri evaluate --checkpoint runs/unet/fold0/model.pt --dataset phantom
    unimri evaluate --pred predictions/ --labels labelsTr/ --out scores.json
    unimri predict --checkpoint runs/unet/fold0/model.pt --input scan.nrrd --output seg.nrrd
    unimri ablate --study components --models unet,deeplabv3 --dataset phantom --out runs/ablate
    unimri bench --model unet --size 128          # training-step throughput, fused vs reference ops

Every ``train``/``ablate`` option can also come from ``--config file.yaml`` (or .json)
holding the same keys as :class:`unimri.train.TrainConfig`; flags override the file.
Several GPUs or machines: ``torchrun --nproc_per_node 4 -m unimri train ...``.
Mistakes in the command line or the data give one ``error:`` line (exit status 2);
internal errors print their traceback, as does any error with ``--debug``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

S = argparse.SUPPRESS

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
    ("--amp", "amp", str, "mixed precision: auto (bf16 on CUDA, none on CPU), bf16, fp16, none"),
    ("--folds", "folds", int, "k of k-fold cross-validation (default 5)"),
    ("--fold", "fold_indices", str, "run only these folds, e.g. 0 or 0,2 (default all)"),
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


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training options (defaults: the paper's protocol; also settable in --config)")
    g.add_argument("--config", default=S, help="YAML or JSON file with TrainConfig keys")
    for flag, key, _, helptext in _TRAIN_FLAGS:
        g.add_argument(flag, dest=key, default=S, metavar=key.upper(), help=helptext)
    g.add_argument("--augment", dest="augment", action="store_true", default=S,
                   help="random flips/rotations/intensity augmentation")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no progress bars")
    g.add_argument("--replace-nonfinite", dest="replace_nonfinite", type=float, default=S, metavar="VALUE",
                   help="replace NaN/inf image voxels by VALUE (default: refuse such files)")
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=S,
                   help="channels-last memory format for the model and its inputs (see README, Performance)")
    g.add_argument("--compile", dest="compile", action="store_true", default=S,
                   help="torch.compile the model (first steps slower while it compiles; see README)")


def _add_out_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out", required=required, help="output folder (refused if it exists, see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing unimri output folder")


def _int_list(text: str, key: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{key.replace('_', '-')}: expected comma-separated integers, got {text!r}") from None


def _json_arg(text: str | None, flag: str) -> dict[str, Any]:
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


def _config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from unimri.train.config import TrainConfig, read_config_file

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
                raise ValueError(f"--{key.replace('_', '-')}: could not parse {raw!r} ({exc})") from None
    for key in ("augment", "progress", "channels_last", "compile"):
        if hasattr(args, key):
            values[key] = getattr(args, key)
    if hasattr(args, "replace_nonfinite"):  # a loader option, kept with the dataset's arguments
        values["dataset_kwargs"] = {**(values.get("dataset_kwargs") or {}),
                                    "replace_nonfinite": args.replace_nonfinite}
    for key in ("batch_size", "epochs"):  # "32" -> 32, "32,16" -> [32, 16]
        if isinstance(values.get(key), str):
            parts = _int_list(values[key], key)
            values[key] = parts[0] if len(parts) == 1 else parts
    for key in ("stages", "patch_size"):  # "64,128" -> [64, 128]; "96x128" stays a string per stage
        if isinstance(values.get(key), str):
            parts = [v.strip() for v in values[key].split(",") if v.strip()]
            parts = [int(v) if v.isdigit() else v for v in parts]
            values[key] = parts if key == "stages" or len(parts) > 1 else parts[0]
    if isinstance(values.get("fold_indices"), str):
        values["fold_indices"] = _int_list(values["fold_indices"], "fold_indices")
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
        cfg = _config_from_args(args)
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
    from unimri.train.evaluate import metric_table

    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"--out: {args.out!r} already exists; pass --overwrite to replace it")
    if args.pred or args.labels:
        if not (args.pred and args.labels):
            raise ValueError("--pred and --labels go together: a folder of predictions and one of labels")
        if args.checkpoint or args.dataset or args.cases:
            raise ValueError("--pred/--labels score existing files; --checkpoint, --dataset and --cases "
                             "apply to evaluating a checkpoint")
        from unimri.train.evaluate import evaluate_files

        result, unmatched = evaluate_files(args.pred, args.labels, progress=not args.no_progress)
        if unmatched:
            print(f"note: {len(unmatched)} label file(s) have no prediction and are not scored: "
                  f"{', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}", file=sys.stderr)
        names, source = None, {"pred": args.pred, "labels": args.labels}
    elif args.checkpoint:
        from unimri.train import registry
        from unimri.train.distributed import resolve_device
        from unimri.train.evaluate import evaluate_model
        from unimri.train.predict import load_trained_model

        device = resolve_device(args.device)
        model, spec, state = load_trained_model(args.checkpoint, device, expected_model=args.model)
        cfg = state.get("config", {})
        dataset = args.dataset or cfg.get("dataset")
        kwargs = _json_arg(args.dataset_kwargs, "--dataset-kwargs") if args.dataset_kwargs \
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
        result = evaluate_model(model, cases, spec, device, spec.normalize, progress=not args.no_progress,
                                surface=True)
        names = cases[0].meta.get("classes") if cases and cases[0].meta else None
        source = {"checkpoint": args.checkpoint, "dataset": dataset}
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


def cmd_predict(args: argparse.Namespace) -> int:
    from unimri.train.distributed import resolve_device
    from unimri.train.predict import predict_path

    from unimri.train.predict import DEFAULT_LABEL_PATTERNS

    written = predict_path(args.checkpoint, args.input, args.output, overwrite=args.overwrite,
                           device=resolve_device(args.device), batch_size=args.batch_size,
                           overlap=args.overlap, progress=not args.no_progress,
                           output_format=args.output_format,
                           label_patterns=DEFAULT_LABEL_PATTERNS + tuple(args.skip or ()),
                           replace_nonfinite=args.replace_nonfinite)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from unimri.train import registry
    from unimri.train.ablation import monai_peer_cells, run_imbalance_sweep, run_study
    from unimri.train.experiment import MARKER

    cfg = _config_from_args(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        registry.check_model_name(m)
    if args.seeds < 1:
        raise ValueError(f"--seeds: expected >= 1, got {args.seeds}")
    seeds = list(range(cfg.seed, cfg.seed + args.seeds))
    if args.peer == "monai":
        from unimri.train.peer import monai_available

        if not monai_available():
            print("unimri ablate: monai is not installed; running without the MONAI peer", file=sys.stderr)
            args.peer = "none"
    if args.study == "imbalance":
        fractions = [float(v) for v in args.fg_fractions.split(",") if v.strip()]
        run_imbalance_sweep(cfg, fractions, models, args.out, seeds=seeds, resume=args.resume,
                            overwrite=args.overwrite, jobs=args.jobs)
        print(open(os.path.join(args.out, "imbalance.csv")).read())
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
                  stats=True, cache=cache, extra_cells=extra, jobs=args.jobs)
        print(open(os.path.join(out, f"{study}.md")).read())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unimri.train.ablation import DEMO_VARIANTS, polarity_overlays, run_variants, study_table
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
          f"{cfg.folds}-fold CV; {jobs} run(s) at once; output -> {args.out}", flush=True)
    cells = run_variants(cfg, DEMO_VARIANTS, ["unet"], args.out, overwrite=args.overwrite,
                         study="demo", column="Method", jobs=jobs)
    overlays = os.path.join(args.out, "overlays_unet.png")
    polarity_overlays(cells, overlays)
    print()
    print(study_table(cells, "Method", cfg.dataset))
    print(f"plots: {os.path.join(args.out, 'curves_unet.png')}, {overlays}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


# the README demo (see docs/experiments.md for why each value was chosen)
DEMO_CONFIG: dict[str, Any] = {
    "model": "unet", "features": 8, "dataset": "phantom",
    "dataset_kwargs": {"num_cases": 120, "size": 64},
    "stages": [32, 64], "batch_size": 4, "epochs": [8, 16], "patience": 10,
    "lr": 0.1, "schedule": "cosine", "folds": 3, "seed": 0,
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
    kwargs = _json_arg(args.dataset_kwargs, "--dataset-kwargs")
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
    from unimri.train.throughput import measure_training_throughput

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


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unimri", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    from unimri import __version__

    ap.add_argument("--version", action="version", version=f"unimri {__version__}")
    ap.add_argument("--debug", action="store_true",
                    help="show the full traceback of every error (default: one line for input mistakes)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for PyTorch ops (default: PyTorch's choice; demo: 1)")
    ap.add_argument("--max-voxels", type=float, default=None, metavar="N",
                    help="refuse image files whose header declares more voxels than N before reading "
                         "them (default: UNIMRI_MAX_VOXELS or 2**31)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="baseline vs unified approach on the built-in phantom (a few minutes on CPU)",
                       description="UNet (width 8) on the built-in 2D phantom (120 cases of 64x64, 1-5 % "
                                   "lesion, bright and dark lesions): cross-entropy baseline (no attention, 24 "
                                   "epochs at 64x64) vs the unified approach (SAS + unified focal loss + "
                                   "progressive resizing: 8 epochs at 32x32, then 16 at 64x64, weights carried "
                                   "over); SGD lr 0.1 with a cosine schedule per stage, batch 4, early stopping "
                                   "(patience 10), 3-fold cross-validation. Prints the metric table (mean ± std "
                                   "over folds) and writes curves_unet.png and overlays_unet.png.")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, one process and one thread each (default: 2 if the machine "
                        "has 2 or more CPUs; the results do not depend on it)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="k-fold training with progressive resizing",
                       description="Train a backbone with k-fold cross-validation and progressive "
                                   "resizing; writes checkpoints, log.jsonl, metrics and plots to --out.",
                       epilog="Example: unimri train --model unet --attention sas --loss unified "
                              "--dataset phantom --stages 64,128 --epochs 10 --folds 5 --out runs/u1")
    _add_train_options(p)
    p.add_argument("--out", help="output folder (refused if it exists unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing unimri run folder")
    p.add_argument("--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metric table of a checkpoint on a dataset, or of prediction files",
                       description="Either predict every case of a dataset whole with a trained checkpoint "
                                   "(--checkpoint), or score existing prediction files against label files "
                                   "matched by case id (--pred DIR --labels DIR; 'case7_seg.nrrd' matches "
                                   "'case7.nii.gz'). Prints IoU, DSC, precision, recall, HD95 and ASD (in the "
                                   "files' units, mm) per case, per class and on average.",
                       epilog="Example: unimri evaluate --pred preds/ --labels Dataset001/labelsTr --out scores.json")
    p.add_argument("--checkpoint", help="a model.pt/best.pt from a run folder")
    p.add_argument("--pred", metavar="PRED_DIR", help="folder of prediction label files (with --labels)")
    p.add_argument("--labels", metavar="LABEL_DIR", help="folder of ground-truth label files (with --pred)")
    p.add_argument("--replace-nonfinite", type=float, default=None, metavar="VALUE",
                   help="replace NaN/inf image voxels by VALUE (default: refuse such files)")
    p.add_argument("--dataset", help="dataset name or folder (default: the one the model was trained on)")
    p.add_argument("--dataset-kwargs", help="JSON dict for the dataset loader")
    p.add_argument("--cases", help="comma-separated case ids (default: all cases)")
    p.add_argument("--model", help="refuse the checkpoint unless it is this backbone")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the table (.md) or all numbers (.json) here")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="segment a NIfTI/NRRD/MHA volume (or a folder of them)",
                       description="Writes a label volume with the input's shape and geometry (origin, "
                                   "spacing, direction). 2D models run slice by slice, 3D models with a "
                                   "sliding window. A folder input: every image file is read and checked "
                                   "before the first output is written; label files (*_label*, *_seg*, "
                                   "*_mask*, --skip) are left out, so a rerun into the input folder does not "
                                   "segment earlier outputs.")
    p.add_argument("--checkpoint", required=True, help="a model.pt/best.pt from a run folder")
    p.add_argument("--input", required=True, help="image file (.nii, .nii.gz, .nrrd, .mha, .png ...) or folder")
    p.add_argument("--output", required=True,
                   help="file input: output file, its suffix picks the format (.nii, .nii.gz, .nrrd, .mha); "
                        "folder input: output folder, files named <input name>_seg<suffix>")
    p.add_argument("--output-format", choices=[".nii.gz", ".nii", ".nrrd", ".mha"], default=None,
                   help="folder input: format of the outputs (default: each input's own format)")
    p.add_argument("--skip", action="append", metavar="PATTERN",
                   help="folder input: also skip files whose name (without suffix) matches this glob "
                        "pattern, e.g. '*_gt' (repeatable)")
    p.add_argument("--replace-nonfinite", type=float, default=None, metavar="VALUE",
                   help="replace NaN/inf voxels by VALUE (default: refuse such inputs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="slices/windows per forward pass")
    p.add_argument("--overlap", type=float, default=0.5, help="3D sliding-window overlap (default 0.5)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ablate", help="the paper's ablation studies as k-fold tables",
                       description="unified: cross-entropy baseline vs the unified approach; components: "
                                   "baseline and every combination of SAS, unified loss and progressive "
                                   "resizing (tables 1-4); loss: ce, focal, Dice, Tversky, focal Tversky, "
                                   "combo, unified (table 3, figure 3); attention: none, spatial, channel, "
                                   "CBAM, SAS (table 5); resizing: progressive resizing vs one stage at the "
                                   "final size with the same total epochs (time to quality); imbalance: "
                                   "baseline vs unified as the phantom's lesion fraction falls. Writes "
                                   "<study>.md (mean ± std over seeds × folds, Wilcoxon p vs the first "
                                   "variant), <study>.csv, <study>_summary.csv and PNG plots.")
    p.add_argument("--study", default="components",
                   choices=["unified", "components", "loss", "attention", "resizing", "imbalance", "all"])
    p.add_argument("--models", default="unet", help="comma-separated backbones (default unet)")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat every run with seeds SEED..SEED+N-1 (default 1); tables give mean ± std over "
                        "seeds × folds and a paired Wilcoxon test against the baseline")
    p.add_argument("--peer", default="none", choices=["none", "monai"],
                   help="also train MONAI UNet + DiceCELoss + Adam for the unified approach's wall time on the "
                        "same folds (studies unified and components; skipped when monai is missing)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each a process with one thread (default 1; same results)")
    p.add_argument("--fg-fractions", default="0.05,0.01,0.003,0.001",
                   help="--study imbalance: phantom lesion fractions (default 0.05,0.01,0.003,0.001)")
    _add_train_options(p)
    _add_out_options(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted ablation in --out")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("bench", help="training-step throughput of one model, fused vs reference ops",
                       description="Times training steps (forward + backward + SGD step) of one model with "
                                   "the fused unimri ops and with the pure-PyTorch reference ops, and prints "
                                   "images/s. This is a quick check, not the benchmark suite: the per-op "
                                   "benchmarks (loss, attention gate, backbones, data loading against "
                                   "eager, torch.compile and MONAI) are run with `python benchmarks/run.py`.")
    p.add_argument("--model", default="unet")
    p.add_argument("--attention", default="sas")
    p.add_argument("--loss", default="unified")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per backend, rounded up to even (blocks of 3 steps per backend in "
                        "turn, the first of each block untimed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--backends", default="auto,reference", help="comma list of auto, cpp, triton, reference")
    p.add_argument("--amp", default="auto", help="mixed precision as in `unimri train`: auto, bf16, fp16, none")
    p.add_argument("--channels-last", action="store_true", help="channels-last model and inputs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the warm-up step includes the compilation)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("datasets", help="list built-in datasets and folder layouts, or the cases of a folder",
                       description="Without PATH: the built-in datasets and the recognised folder layouts. "
                                   "With PATH (a folder or a built-in name): the detected layout and one row "
                                   "per case: shape, spacing, channels, classes, foreground fraction and the "
                                   "number of NaN/inf voxels.")
    p.add_argument("path", nargs="?", default=None, metavar="PATH", help="a dataset folder or built-in name")
    p.add_argument("--layout", help="folder layout (default: detected)")
    p.add_argument("--dataset-kwargs", help="JSON dict for the dataset loader")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("convert-checkpoint", help="rewrite an older-format checkpoint in the safe format",
                       description="Older checkpoints could hold arbitrary Python objects, and opening them can "
                                   "run code. This reads OLD (only with --trust-this-file) and writes NEW, which "
                                   "holds only tensors and plain data and is checked against its hash when opened.")
    p.add_argument("old", metavar="OLD", help="the older checkpoint")
    p.add_argument("new", metavar="NEW", help="where to write the converted checkpoint")
    p.add_argument("--trust-this-file", action="store_true",
                   help="confirm that OLD comes from a source you trust (required)")
    p.set_defaults(func=cmd_convert_checkpoint)
    return ap


def cmd_convert_checkpoint(args) -> int:
    from unimri.train.convert import convert_checkpoint

    written = convert_checkpoint(args.old, args.new, trust=args.trust_this_file)
    print(f"wrote {written}")
    return 0


def _package_roots() -> tuple[str, ...]:
    import unimri
    import unimri_kernels

    return tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (unimri, unimri_kernels))


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake in the user's input rather than a bug.

    A ValueError/TypeError/ImportError counts as the user's when unimri raised it on
    purpose: the innermost frame of its traceback is a ``raise`` statement in unimri's own
    source (the checks of arguments, files and data). The same types raised inside torch,
    numpy or by the interpreter (e.g. a wrong call inside unimri) are internal errors. An
    OSError about a named file (permission denied, disk full) is the user's too.
    """
    if isinstance(exc, OSError):
        return exc.filename is not None
    if not isinstance(exc, (ValueError, TypeError, ImportError)):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    import linecache

    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_package_roots()):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"unimri: error: --threads: expected >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.max_voxels is not None:
            from unimri.data.limits import set_max_voxels

            set_max_voxels(args.max_voxels)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"unimri {args.command}: interrupted (a run can continue with --resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into user mistakes and internal errors below
        from unimri.train.engine import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"unimri {args.command}: {exc}; continue with --resume", file=sys.stderr)
            return 3
        if args.debug or not is_user_error(exc):
            raise
        print(f"unimri {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
