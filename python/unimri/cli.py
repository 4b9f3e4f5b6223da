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
import os
import sys
from typing import Sequence

from unimri import commands
from unimri.commands import _TRAIN_FLAGS, DEMO_CONFIG, config_from_args  # noqa: F401 (imported by users and tests)
from unimri.integrations.nnunet import cli as nnunet_cli

S = argparse.SUPPRESS
_config_from_args = config_from_args


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


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="baseline vs unified approach on the built-in phantom (a few minutes on CPU)",
                       description="UNet (width 8) on the built-in 2D phantom (120 cases of 64x64, 1-5 % "
                                   "lesion, bright and dark lesions): cross-entropy baseline (no attention, 24 "
                                   "epochs at 64x64) vs the unified approach (SAS + unified focal loss + "
                                   "progressive resizing: 8 epochs at 32x32, then 16 at 64x64, weights carried "
                                   "over); SGD lr 0.4 with a cosine schedule per stage, batch 4, early stopping "
                                   "(patience 10) on a validation set (0.1 of each fold's non-test cases), "
                                   "3-fold nested cross-validation: each fold's 40 test cases are only scored. "
                                   "Prints the test metric table (mean ± std "
                                   "over test folds, difference with its CI) and writes curves_unet.png and "
                                   "overlays_unet.png.")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, one process and one thread each (default: 2 if the machine "
                        "has 2 or more CPUs; the results do not depend on it)")
    p.set_defaults(func=commands.cmd_demo)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="nested k-fold training with progressive resizing, scored on test folds",
                       description="Train a backbone with nested k-fold cross-validation and progressive "
                                   "resizing: each outer fold trains on its training cases, stops early and "
                                   "keeps the best epoch on a validation subset of them (--val-fraction), and "
                                   "is scored on its test cases, which nothing else reads. Writes checkpoints, "
                                   "folds.json (train/val/test per fold), log.jsonl, test metrics and plots "
                                   "to --out.",
                       epilog="Example: unimri train --model unet --attention sas --loss unified "
                              "--dataset phantom --stages 64,128 --epochs 10 --folds 5 --out runs/u1")
    _add_train_options(p)
    p.add_argument("--out", help="output folder (refused if it exists unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing unimri run folder")
    p.add_argument("--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last checkpoint")
    p.set_defaults(func=commands.cmd_train)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=commands.cmd_evaluate)


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--save-attention", action="store_true",
                   help="also write each attention gate's map (float32 in [0, 1], the prediction's grid, "
                        "geometry and format) as <output stem>_attn-<gate><suffix>, one file per gate")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.cmd_predict)


def _add_ablate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="the paper's ablation studies as nested k-fold test tables",
                       description="unified: cross-entropy baseline vs the unified approach; components: "
                                   "baseline and every combination of SAS, unified loss and progressive "
                                   "resizing (tables 1-4); loss: ce, focal, Dice, Tversky, focal Tversky, "
                                   "combo, unified (table 3, figure 3); attention: none, spatial, channel, "
                                   "CBAM, SAS (table 5); resizing: progressive resizing vs one stage at the "
                                   "final size with the same total epochs (time to quality); imbalance: "
                                   "baseline vs unified as the phantom's lesion fraction falls. Writes "
                                   "<study>.md (test scores: mean ± std over test folds, difference to the first "
                                   "variant with a bootstrap CI and Holm-corrected Wilcoxon p over test folds), "
                                   "<study>_results.json, <study>.csv, <study>_summary.csv and PNG plots.")
    p.add_argument("--study", default="components",
                   choices=["unified", "components", "loss", "attention", "resizing", "imbalance", "all",
                            "backbones", "lambda"],
                   help="the study (see above); backbones: baseline vs the unified approach for every "
                        "backbone (table 1); lambda: the unified approach with the unified loss's lambda 0.1..0.9 (figure 3f, "
                        "lambda_<model>.png); see docs/studies.md")
    p.add_argument("--models", default=None,
                   help="comma-separated backbones (default unet; --study backbones: unet,fcn,rcnn,segnet,deeplabv3)")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat every run with seeds SEED..SEED+N-1 (default 1) on the same test folds; "
                        "seeds are averaged within a test fold before folds are compared")
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
    p.set_defaults(func=commands.cmd_ablate)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=commands.cmd_bench)


def _add_datasets_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list built-in datasets and folder layouts, or the cases of a folder",
                       description="Without PATH: the built-in datasets and the recognised folder layouts. "
                                   "With PATH (a folder or a built-in name): the detected layout and one row "
                                   "per case: shape, spacing, channels, classes, foreground fraction and the "
                                   "number of NaN/inf voxels.")
    p.add_argument("path", nargs="?", default=None, metavar="PATH", help="a dataset folder or built-in name")
    p.add_argument("--layout", help="folder layout (default: detected)")
    p.add_argument("--dataset-kwargs", help="JSON dict for the dataset loader")
    p.set_defaults(func=commands.cmd_datasets)


def _add_convert_checkpoint_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-checkpoint", help="rewrite an older-format checkpoint in the safe format",
                       description="Older checkpoints could hold arbitrary Python objects, and opening them can "
                                   "run code. This reads OLD (only with --trust-this-file) and writes NEW, which "
                                   "holds only tensors and plain data and is checked against its hash when opened.")
    p.add_argument("old", metavar="OLD", help="the older checkpoint")
    p.add_argument("new", metavar="NEW", help="where to write the converted checkpoint")
    p.add_argument("--trust-this-file", action="store_true",
                   help="confirm that OLD comes from a source you trust (required)")
    p.set_defaults(func=commands.cmd_convert_checkpoint)


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
    for add in (_add_demo_parser, _add_train_parser, _add_evaluate_parser, _add_predict_parser,
                _add_ablate_parser, _add_bench_parser, _add_datasets_parser, _add_convert_checkpoint_parser,
                nnunet_cli.add_parsers):
        add(sub)
    return ap


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
