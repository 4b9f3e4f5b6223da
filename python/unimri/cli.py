"""The ``unimri`` command (also ``python -m unimri``).

    unimri demo                                  # 5-minute baseline-vs-unified demo on phantom
    unimri datasets                              # built-in datasets and folder layouts
    unimri train --model unet --attention sas --loss unified --dataset phantom \\
                 --stages 128,256,512 --folds 5 --out runs/unet
    unimri train --resume runs/unet              # continue a killed run exactly
    unimri evaluate --checkpoint runs/unet/fold0/model.pt --dataset phantom
    unimri predict --checkpoint runs/unet/fold0/model.pt --input scan.nii.gz --output seg.nii.gz
    unimri ablate --study components --models unet,deeplabv3 --dataset phantom --out runs/ablate
    unimri bench --model unet --size 128          # training throughput, fused vs reference ops

Every ``train``/``ablate`` option can also come from ``--config file.yaml`` (or .json)
holding the same keys as :class:`unimri.train.TrainConfig`; flags override the file.
Several GPUs or machines: ``torchrun --nproc_per_node 4 -m unimri train ...``.
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
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=S,
                   help="channels-last memory format for the model and its inputs (see README, Performance)")
    g.add_argument("--compile", dest="compile", action="store_true", default=S,
                   help="torch.compile the model (first steps slower while it compiles; see README)")


def _add_out_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out", required=required, help="output folder (refused if it exists, see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing unimri output folder")


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
    for key in ("batch_size", "epochs"):  # "32" -> 32, "32,16" -> [32, 16]
        if isinstance(values.get(key), str):
            parts = [int(v) for v in values[key].split(",") if v.strip()]
            values[key] = parts[0] if len(parts) == 1 else parts
    for key in ("stages", "patch_size"):  # "64,128" -> [64, 128]; "96x128" stays a string per stage
        if isinstance(values.get(key), str):
            parts = [v.strip() for v in values[key].split(",") if v.strip()]
            parts = [int(v) if v.isdigit() else v for v in parts]
            values[key] = parts if key == "stages" or len(parts) > 1 else parts[0]
    if isinstance(values.get("fold_indices"), str):
        values["fold_indices"] = [int(v) for v in values["fold_indices"].split(",") if v.strip()]
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
    from unimri.train import registry
    from unimri._atomic import atomic_write_text
    from unimri.train.evaluate import evaluate_model, metric_table
    from unimri.train.predict import load_trained_model
    from unimri.train.distributed import resolve_device

    device = resolve_device(args.device)
    model, spec, state = load_trained_model(args.checkpoint, device, expected_model=args.model)
    cfg = state.get("config", {})
    dataset = args.dataset or cfg.get("dataset")
    kwargs = json.loads(args.dataset_kwargs) if args.dataset_kwargs else cfg.get("dataset_kwargs", {})
    cases = registry.load_cases(dataset, **kwargs)
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        by_id = {c.case_id: c for c in cases}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise ValueError(f"--cases: unknown case id(s) {missing[:5]} in dataset {dataset!r}")
        cases = [by_id[w] for w in wanted]
    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"--out: {args.out!r} already exists; pass --overwrite to replace it")
    result = evaluate_model(model, cases, spec, device, spec.normalize, progress=not args.no_progress)
    names = cases[0].meta.get("classes") if cases and cases[0].meta else None
    table = metric_table(result, names)
    print(table)
    if args.out:
        payload = {"checkpoint": args.checkpoint, "dataset": dataset, "summary": result.summary,
                   "per_class": result.per_class, "per_case": result.per_case}
        if args.out.endswith(".json"):
            atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
        else:
            atomic_write_text(args.out, table)
        print(f"wrote {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from unimri.train.distributed import resolve_device
    from unimri.train.predict import predict_path

    written = predict_path(args.checkpoint, args.input, args.output, overwrite=args.overwrite,
                           device=resolve_device(args.device), batch_size=args.batch_size,
                           overlap=args.overlap, progress=not args.no_progress)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from unimri.train.ablation import run_study

    cfg = _config_from_args(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    from unimri.train import registry

    for m in models:
        registry.check_model_name(m)
    studies = ["components", "loss", "attention"] if args.study == "all" else [args.study]
    for i, study in enumerate(studies):
        out = args.out if len(studies) == 1 else os.path.join(args.out, study)
        run_study(cfg, study, models, out, resume=args.resume, overwrite=args.overwrite)
        print(open(os.path.join(out, f"{study}.md")).read())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unimri.train.ablation import DEMO_VARIANTS, run_variants, study_table
    from unimri.train.config import TrainConfig

    import torch

    torch.set_num_threads(args.threads or 1)  # a tiny model: one thread is fastest and robust on shared CPUs
    cfg = TrainConfig.from_dict({**DEMO_CONFIG, "progress": not args.no_progress}).validate()
    t0 = time.perf_counter()
    print(f"unimri demo: UNet on the built-in phantom, baseline (cross-entropy, no attention, one stage "
          f"at 64) vs the unified approach (SAS + unified focal loss + progressive resizing 32 -> 64); "
          f"{cfg.folds}-fold CV, folds {cfg.selected_folds()}; output -> {args.out}", flush=True)
    cells = run_variants(cfg, DEMO_VARIANTS, ["unet"], args.out, overwrite=args.overwrite,
                         study="demo", column="Method")
    print()
    print(study_table(cells, "Method", cfg.dataset))
    print(f"plots: {os.path.join(args.out, 'curves_unet.png')}, {os.path.join(args.out, 'overlays_unet.png')}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


# the README demo: small 2D phantom, UNet, 64 -> 128 progressive resizing (see docs/experiments.md)
DEMO_CONFIG: dict[str, Any] = {
    "model": "unet", "features": 8, "dataset": "phantom",
    "dataset_kwargs": {"num_cases": 40, "size": 64},
    "stages": [32, 64], "batch_size": 4, "epochs": [8, 16], "patience": 6,
    "lr": 0.05, "folds": 3, "seed": 0,
}


def cmd_datasets(args: argparse.Namespace) -> int:
    from unimri.data import list_datasets

    rows = list_datasets()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from unimri.train.throughput import measure_training_throughput

    rows = measure_training_throughput(model=args.model, attention=args.attention, loss=args.loss,
                                       size=args.size, batch_size=args.batch_size, steps=args.steps,
                                       features=args.features, device=args.device,
                                       backends=[b.strip() for b in args.backends.split(",")])
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
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for PyTorch ops (default: PyTorch's choice; demo: 1)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="baseline vs unified approach on the built-in phantom (a few minutes on CPU)",
                       description="UNet (width 8) on the built-in 2D phantom (40 cases of 64x64, 1-5 %% lesion): "
                                   "cross-entropy baseline (no attention, 16 epochs at 64x64) vs the unified "
                                   "approach (SAS + unified focal loss + progressive resizing: 8 epochs at 32x32, "
                                   "then 16 at 64x64, weights carried over); SGD lr 0.05, batch 4, early stopping "
                                   "(patience 6), 3-fold cross-validation. Prints the metric table (mean ± std "
                                   "over folds) and writes curves_unet.png and overlays_unet.png.")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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

    p = sub.add_parser("evaluate", help="metric table of a checkpoint on a dataset",
                       description="Predict every case of a dataset whole with a trained checkpoint "
                                   "and print IoU/DSC/precision/recall per case and on average.")
    p.add_argument("--checkpoint", required=True, help="a model.pt/best.pt from a run folder")
    p.add_argument("--dataset", help="dataset name or folder (default: the one the model was trained on)")
    p.add_argument("--dataset-kwargs", help="JSON dict for the dataset loader")
    p.add_argument("--cases", help="comma-separated case ids (default: all cases)")
    p.add_argument("--model", help="refuse the checkpoint unless it is this backbone")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the table (.md) or all numbers (.json) here")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="segment a NIfTI/NRRD volume (or a folder of them)",
                       description="Writes a NIfTI label volume with the input's shape and affine. "
                                   "2D models run slice by slice, 3D models with a sliding window.")
    p.add_argument("--checkpoint", required=True, help="a model.pt/best.pt from a run folder")
    p.add_argument("--input", required=True, help="image file (.nii, .nii.gz, .nrrd, .mha, .png ...) or folder")
    p.add_argument("--output", required=True, help=".nii/.nii.gz file (file input) or folder (folder input)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="slices/windows per forward pass")
    p.add_argument("--overlap", type=float, default=0.5, help="3D sliding-window overlap (default 0.5)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ablate", help="the paper's ablation studies as k-fold tables",
                       description="unified: cross-entropy baseline vs the unified approach; components: baseline / +SAS / +unified loss / +progressive resizing / "
                                   "all (tables 1-4); loss: ce, focal, tversky, combo, unified (table 3, "
                                   "figure 3); attention: spatial, channel, CBAM, SAS (table 5). Writes "
                                   "<study>.md (mean ± std over folds), <study>.csv and plots.")
    p.add_argument("--study", default="components", choices=["unified", "components", "loss", "attention", "all"])
    p.add_argument("--models", default="unet", help="comma-separated backbones (default unet)")
    _add_train_options(p)
    _add_out_options(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted ablation in --out")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("bench", help="training throughput with fused vs reference ops",
                       description="Times training steps (forward + backward + SGD step) of one model with "
                                   "the fused unimri ops and with the pure-PyTorch reference ops.")
    p.add_argument("--model", default="unet")
    p.add_argument("--attention", default="sas")
    p.add_argument("--loss", default="unified")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--backends", default="auto,reference", help="comma list of auto, cpp, triton, reference")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("datasets", help="list built-in datasets and folder layouts")
    p.set_defaults(func=cmd_datasets)
    return ap


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
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"unimri {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from unimri.train.engine import TrainingInterrupted

        if not isinstance(exc, TrainingInterrupted):
            raise
        print(f"unimri {args.command}: {exc}; continue with --resume", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"unimri {args.command}: interrupted (a run can continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
