"""nnU-Net as the quality peer: test DSC against training CPU time, nnU-Net vs unimri's trainers.

For each outer fold of the 2D phantom (split by case; the fold's test cases are written
to ``imagesTs`` and never seen by planning, preprocessing, training or nnU-Net's own
train/val split), nnU-Net plans and preprocesses the training side, then each nnU-Net trainer
trains at each epoch budget from scratch (``nnUNetTrainerBudget`` = nnU-Net's default
trainer, ``nnUNetTrainerUnifiedFocalSAS`` = unimri's loss and gates, both on nnU-Net's
plans, poly LR schedule over the budget, nnU-Net's internal fold 0 for its validation),
predicts the test cases and scores the lesion DSC per test case; unimri's own pipeline
(``unimri``: its trainer and recipe) trains on the same training side at several budgets
and is scored the same way. Writes

  <out>.csv   one row per (fold, trainer, epochs): CPU seconds of training (user+sys of
              the nnUNetv2_train process), wall seconds, mean test DSC, test cases
  <out>.md    provenance (commit, command, machine, ISA, load, torch/nnunetv2 versions,
              date), the protocol, and the per-budget table with paired differences
  <out>.png   mean test DSC (per-fold points) against mean training CPU time
  <out>_folds.json  the outer split

Runs where nnunetv2 imports (the environment of scripts/test_nnunet.sh). The default
run (3 folds, 24 cases of 64x64, budgets 1/2/4/8 epochs of 30 iterations: 24 nnU-Net
training runs, each with about 30 CPU s of nnU-Net start-up and final validation, and 12
short unimri runs) is estimated at about 30 minutes on 2 idle CPU cores; ``--smoke`` runs the smallest budget on a tiny set
(about 3 CPU minutes; 15 wall minutes on a heavily shared machine).

    python benchmarks/nnunet_curve.py --out benchmarks/results/nnunet_curve
    python benchmarks/nnunet_curve.py --plot OUT.png A.csv B.csv   # one plot of several runs
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

UNIMRI = "unimri"  # unimri's own pipeline: its trainer, UNet + SAS + unified loss + progressive resizing
TRAINERS = ("nnUNetTrainerBudget", "nnUNetTrainerUnifiedFocalSAS", UNIMRI)
LABELS = {"nnUNetTrainerBudget": "nnU-Net default (Dice+CE)",
          "nnUNetTrainerUnifiedFocalSAS": "nnU-Net + unimri (unified focal + SAS)",
          UNIMRI: "unimri pipeline (unified approach)"}
#: unimri's recipe: the published phantom studies' (docs/experiments.md), chosen on the development
#: phantom (seed 0); a budget multiplies its stage epochs (1 -> 1,2 epochs at 32, 64 pixels)
UNIMRI_RECIPE = {"model": "unet", "attention": "sas", "loss": "unified", "features": 8, "stages": [32, 64],
                 "batch_size": 4, "patience": 10, "lr": 0.1, "schedule": "cosine", "val_fraction": 0.2}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "nnunet_curve"), help="output path prefix")
    ap.add_argument("--work", default=None, help="nnU-Net workspace folder (default: <out>_work, removed after)")
    ap.add_argument("--folds", type=int, default=3, help="outer folds (default 3)")
    ap.add_argument("--cases", type=int, default=24, help="phantom cases (default 24)")
    ap.add_argument("--size", type=int, default=64, help="image edge in pixels (default 64)")
    ap.add_argument("--epochs", default="1,2,4,8", help="epoch budgets, comma-separated (default 1,2,4,8)")
    ap.add_argument("--iterations", type=int, default=30, help="training iterations per epoch (default 30)")
    ap.add_argument("--val-iterations", type=int, default=5, help="validation iterations per epoch (default 5)")
    ap.add_argument("--unimri-epochs", default="1,2,4,8",
                    help="unimri pipeline budgets: multiples of its (1, 2) stage epochs (default 1,2,4,8)")
    ap.add_argument("--trainers", default=",".join(TRAINERS),
                    help=f"trainers, comma-separated ({UNIMRI!r} is unimri's own pipeline)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per nnU-Net process (default 2)")
    ap.add_argument("--seed", type=int, default=1,
                    help="phantom and split seed (default 1, the reported phantom; 0 is the development set)")
    ap.add_argument("--keep-work", action="store_true", help="keep the nnU-Net workspace")
    ap.add_argument("--plot", nargs="+", metavar="PATH",
                    help="OUT.png CSV [CSV ...]: redraw the curve from runs' CSVs, train nothing")
    ap.add_argument("--smoke", action="store_true",
                    help="smallest budget on a tiny set (2 folds, 12 cases of 48x48, 1 epoch of 5 iterations)")
    args = ap.parse_args(argv)
    if args.plot is not None and len(args.plot) < 2:
        ap.error("--plot: give the PNG to write and at least one CSV")
    if args.smoke:
        args.folds, args.cases, args.size, args.epochs, args.iterations, args.val_iterations = 2, 12, 48, "1", 5, 2
    if args.smoke:
        args.unimri_epochs = "1"
    try:
        args.epoch_list = sorted({int(e) for e in args.epochs.split(",")})
        args.unimri_epoch_list = sorted({int(e) for e in args.unimri_epochs.split(",")})
    except ValueError:
        ap.error(f"--epochs/--unimri-epochs: expected whole numbers separated by commas, got "
                 f"{args.epochs!r}/{args.unimri_epochs!r}")
    if min(args.epoch_list + args.unimri_epoch_list) < 1 or args.iterations < 1 or args.val_iterations < 1:
        ap.error("--epochs, --iterations and --val-iterations must be >= 1")
    if args.folds < 2 or args.cases - -(-args.cases // args.folds) < 5:
        ap.error(f"--folds/--cases: need >= 2 folds and enough cases for nnU-Net's 5-fold split of each "
                 f"training side (got {args.folds} folds, {args.cases} cases)")
    args.trainer_list = [t.strip() for t in args.trainers.split(",") if t.strip()]
    return args


def provenance(args: argparse.Namespace) -> dict:
    import torch
    from harness import cpu_isa, device_name

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    try:
        from importlib.metadata import version

        nnunet_version = version("nnunetv2")
    except Exception:  # noqa: BLE001
        nnunet_version = "?"
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit + (" (uncommitted changes)" if dirty else ""),
            "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "machine": device_name("cpu"), "isa": cpu_isa(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "nnunetv2": nnunet_version,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "load_before": os.getloadavg()[0]}


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """DSC of the foreground (label > 0); 1 when both are empty."""
    p, t = pred > 0, label > 0
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(p, t).sum() / denom)


def timed(cmd: list[str], env: dict, augmentation_workers: int | None = None) -> tuple[float, float]:
    """(CPU seconds of the child, wall seconds) of one nnU-Net command."""
    from unimri.integrations.nnunet.workspace import run_nnunet

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run_nnunet(cmd, env, timeout=3600, augmentation_workers=augmentation_workers)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def nnunet_bin(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def run_unimri(args, fold: int, train, val, test, rows: list[dict], progress) -> None:
    """unimri's own pipeline on the fold: trains on ``train``, stops early and keeps the best
    epoch on ``val`` (both from the fold's training side), predicts ``test`` whole."""
    import torch

    from unimri.runtime.inference import predict_labels
    from unimri.runtime.scoring import normalized_image
    from unimri.train.config import TrainConfig
    from unimri.train.datasets import infer_in_channels, infer_num_classes
    from unimri.train.distributed import DistContext
    from unimri.train.engine import FoldTrainer
    from unimri.train.runlog import JsonlLog

    torch.set_num_threads(args.threads)
    cases = train + val + test
    in_channels, num_classes = infer_in_channels(cases), infer_num_classes(cases)
    for budget in args.unimri_epoch_list:
        cfg = TrainConfig(**UNIMRI_RECIPE, epochs=[budget, 2 * budget], seed=args.seed, device="cpu",
                          progress=False).validate()
        progress(f"fold {fold}: {UNIMRI}, stage epochs {budget},{2 * budget}")
        with tempfile.TemporaryDirectory() as fold_dir:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            trainer = FoldTrainer(cfg, fold, train, val, fold_dir, DistContext(), JsonlLog(None), in_channels,
                                  num_classes)
            model = trainer.run()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        model.eval()
        pcpu0 = time.process_time()
        scores = [dice(predict_labels(model, normalized_image(c, cfg.normalize), trainer.inference).numpy(),
                       np.asarray(c.label)) for c in test]
        rows.append({"fold": fold, "trainer": UNIMRI, "epochs": budget, "iterations": "",
                     "train_cpu_s": round(cpu, 2), "train_wall_s": round(wall, 2),
                     "predict_cpu_s": round(time.process_time() - pcpu0, 2),
                     "test_dsc": round(float(np.mean(scores)), 4), "test_cases": len(scores)})
        progress(f"  test DSC {np.mean(scores):.3f}, training {cpu:.0f} CPU s ({wall:.0f} s wall)")


def run_fold(args, fold: int, train, test, work: str, rows: list[dict], progress) -> None:
    import nibabel as nib

    from unimri.integrations.nnunet.workspace import nnunet_environment, write_raw_dataset

    dataset = 950 + fold
    base = os.path.join(work, f"fold{fold}")
    env = nnunet_environment(base, threads=args.threads)
    folder = write_raw_dataset(env["nnUNet_raw"], dataset, f"PhantomFold{fold}", train, test)
    progress(f"fold {fold}: plan and preprocess ({len(train)} training cases, {len(test)} test cases)")
    timed([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(dataset), "-c", "2d", "-np", "1", "-npfp", "1"], env)
    for trainer in (t for t in args.trainer_list if t != UNIMRI):
        for epochs in args.epoch_list:
            results = os.path.join(base, f"results_{trainer}_{epochs}")
            run_env = {**env, "nnUNet_results": results, "UNIMRI_NNUNET_EPOCHS": str(epochs),
                       "UNIMRI_NNUNET_ITERATIONS": str(args.iterations),
                       "UNIMRI_NNUNET_VAL_ITERATIONS": str(args.val_iterations)}
            os.makedirs(results, exist_ok=True)
            progress(f"fold {fold}: {trainer}, {epochs} epoch(s) x {args.iterations} iterations")
            cpu, wall = timed([nnunet_bin("nnUNetv2_train"), str(dataset), "2d", "0", "-tr", trainer,
                               "-device", "cpu"], run_env, augmentation_workers=0)
            pred = os.path.join(base, f"pred_{trainer}_{epochs}")
            pcpu, _ = timed([nnunet_bin("nnUNetv2_predict"), "-i", os.path.join(folder, "imagesTs"), "-o", pred,
                             "-d", str(dataset), "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu",
                             "--disable_tta", "-npp", "1", "-nps", "1"], run_env)
            scores = []
            for name in sorted(os.listdir(os.path.join(folder, "labelsTs"))):
                label = np.asarray(nib.load(os.path.join(folder, "labelsTs", name)).dataobj)
                seg = np.asarray(nib.load(os.path.join(pred, name)).dataobj)
                scores.append(dice(seg, label))
            rows.append({"fold": fold, "trainer": trainer, "epochs": epochs, "iterations": args.iterations,
                         "train_cpu_s": round(cpu, 2), "train_wall_s": round(wall, 2),
                         "predict_cpu_s": round(pcpu, 2), "test_dsc": round(float(np.mean(scores)), 4),
                         "test_cases": len(scores)})
            progress(f"  test DSC {np.mean(scores):.3f}, training {cpu:.0f} CPU s ({wall:.0f} s wall)")


def budget_label(trainer: str, epochs: int, iterations) -> str:
    if trainer == UNIMRI:
        return f"stages {epochs},{2 * epochs} epochs"
    return f"{epochs} epoch(s) × {iterations} it"


def curve_table(rows: list[dict], trainers: list[str]) -> list[str]:
    """One line per (method, budget): mean training CPU s per fold, test DSC mean ± std over
    the folds, and each fold's DSC."""
    lines = ["| method | budget | training CPU s per fold | test DSC (mean ± std over folds) | test DSC per fold |",
             "|---|---|---|---|---|"]
    for t in trainers:
        for e in sorted({r["epochs"] for r in rows if r["trainer"] == t}):
            sel = sorted((r for r in rows if r["trainer"] == t and r["epochs"] == e), key=lambda r: r["fold"])
            dsc = [r["test_dsc"] for r in sel]
            lines.append(f"| {LABELS.get(t, t)} | {budget_label(t, e, sel[0].get('iterations'))} | "
                         f"{np.mean([r['train_cpu_s'] for r in sel]):.0f} | {np.mean(dsc):.3f} ± {np.std(dsc):.3f} | "
                         f"{', '.join(f'{d:.3f}' for d in dsc)} |")
    return lines


def paired_table(rows: list[dict], trainers: list[str], epochs: list[int]) -> list[str]:
    """Two nnU-Net trainers at the same epoch budgets: DSC / CPU s of each and the paired
    per-fold difference (second − first)."""
    lines = ["| epochs | " + " | ".join(f"{LABELS.get(t, t)}: DSC / CPU s" for t in trainers)
             + (" | paired DSC difference (2nd − 1st), per fold |" if len(trainers) == 2 else " |"),
             "|---" * (len(trainers) + 1 + (len(trainers) == 2)) + "|"]
    for e in epochs:
        cells = []
        per = {}
        for t in trainers:
            sel = sorted((r for r in rows if r["trainer"] == t and r["epochs"] == e), key=lambda r: r["fold"])
            per[t] = [r["test_dsc"] for r in sel]
            cells.append(f"{np.mean(per[t]):.3f} ± {np.std(per[t]):.3f} / {np.mean([r['train_cpu_s'] for r in sel]):.0f}")
        if len(trainers) == 2:
            diff = np.array(per[trainers[1]]) - np.array(per[trainers[0]])
            cells.append(f"{diff.mean():+.3f} ({', '.join(f'{d:+.3f}' for d in diff)})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], trainers: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for t, colour in zip(trainers, ("tab:gray", "tab:red", "tab:blue", "tab:green")):
        xs, ys, epochs = [], [], sorted({r["epochs"] for r in rows if r["trainer"] == t})
        for e in epochs:
            sel = [r for r in rows if r["trainer"] == t and r["epochs"] == e]
            ax.scatter([r["train_cpu_s"] for r in sel], [r["test_dsc"] for r in sel], s=12, color=colour, alpha=0.4)
            xs.append(np.mean([r["train_cpu_s"] for r in sel]))
            ys.append(np.mean([r["test_dsc"] for r in sel]))
        ax.plot(xs, ys, "-o", color=colour, label=LABELS.get(t, t))
        for x, y, e in zip(xs, ys, epochs):
            ax.annotate(f"×{e}" if t == UNIMRI else f"{e} ep", (x, y), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training CPU time per fold (s, user+sys; log scale)")
    ax.set_ylabel("test DSC (lesion), mean over outer folds")
    ax.set_title("Phantom 2D: test DSC vs CPU budget (dots: single folds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_rows(path: str) -> list[dict]:
    """Rows of a curve CSV with numbers as numbers."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for key in ("fold", "epochs"):
            r[key] = int(r[key])
        for key in ("train_cpu_s", "test_dsc"):
            r[key] = float(r[key])
    return rows


def plot_csvs(paths: list[str], out: str) -> None:
    """One plot of the series of several curve CSVs (e.g. a run that extends another's budgets)."""
    rows = [r for p in paths for r in read_rows(p)]
    plot(rows, list(dict.fromkeys(r["trainer"] for r in rows)), out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        plot_csvs(args.plot[1:], args.plot[0])
        return 0
    try:
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        print(f"nnunet_curve: nnunetv2 cannot be imported ({exc}); run in the environment of "
              f"scripts/test_nnunet.sh", file=sys.stderr)
        return 2
    from unimri.data.phantom import phantom_cases
    from unimri.data.splits import nested_kfold_split

    prov = provenance(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    work = args.work or args.out + "_work"
    if os.path.exists(work):
        shutil.rmtree(work)
    started = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    cases = phantom_cases(args.cases, spatial_dims=2, seed=args.seed, size=args.size)
    ids = [c.case_id for c in cases]
    folds = nested_kfold_split(ids, k=args.folds, seed=args.seed, val_fraction=UNIMRI_RECIPE["val_fraction"])
    with open(args.out + "_folds.json", "w", encoding="utf-8") as fh:
        json.dump({"k": args.folds, "seed": args.seed, "note": "test = the outer fold; nnU-Net gets train + val "
                   "as its training side, splits it into its own 5 folds and validates on its fold 0; unimri "
                   "trains on train and stops early on val",
                   "folds": [{"train": f.train, "val": f.val, "test": f.test} for f in folds]}, fh, indent=1)
    by_id = dict(zip(ids, cases))
    rows: list[dict] = []
    for fold, f in enumerate(folds):
        train, val, test = ([by_id[i] for i in part] for part in (f.train, f.val, f.test))
        if any(t != UNIMRI for t in args.trainer_list):
            run_fold(args, fold, train + val, test, work, rows, progress)
        if UNIMRI in args.trainer_list:
            run_unimri(args, fold, train, val, test, rows, progress)
    prov["load_after"] = os.getloadavg()[0]
    prov["total_wall_s"] = round(time.perf_counter() - started, 1)
    with open(args.out + ".csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.trainer_list, args.out + ".png")
    nnunet_trainers = [t for t in args.trainer_list if t != UNIMRI]
    lines = [f"# nnU-Net as the quality peer: test DSC vs training CPU time (phantom 2D)", "",
             *(f"- {k}: {v}" for k, v in prov.items()), "",
             f"Protocol: {args.cases} phantom cases of {args.size}x{args.size} (seed {args.seed}), {args.folds} outer "
             f"folds by case; each fold's test cases are only predicted and scored. nnU-Net plans and "
             f"preprocesses each training side (2d configuration) and trains on its internal fold 0 (4/5 of the "
             f"training side; its validation fifth is what nnU-Net validates on). Budgets: "
             f"{', '.join(map(str, args.epoch_list))} epoch(s) of {args.iterations} iterations, each a fresh run "
             f"with nnU-Net's poly schedule over that budget; CPU time is user+sys of the nnUNetv2_train process "
             f"({args.threads} threads), its final validation included. unimri's pipeline (UNet + SAS + unified "
             f"loss, progressive resizing 32 -> 64, the phantom studies' recipe chosen on the development "
             f"phantom, seed 0) trains on the fold's training side less a validation fifth that early stopping "
             f"and the best epoch use; budgets multiply its stage epochs ({', '.join(map(str, args.unimri_epoch_list))}"
             f" × (1, 2)); CPU time is this process's time in training ({args.threads} threads). DSC: lesion "
             f"(label > 0) per test case, the same function for every method, mean over the fold's cases; ± is "
             f"the std over folds. With {args.folds} folds no paired test is meaningful: per-fold values are listed.",
             "", *curve_table(rows, args.trainer_list), ""]
    if len(nnunet_trainers) == 2:
        lines += ["nnU-Net's two trainers at the same epoch budgets:", "",
                  *paired_table(rows, nnunet_trainers, args.epoch_list), ""]
    with open(args.out + ".md", "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
