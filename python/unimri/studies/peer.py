"""The peer a user would otherwise run: MONAI ``UNet`` + ``DiceCELoss`` + Adam (the MONAI
tutorial recipe), trained on the same folds as a unimri run for the same wall time.

For each (seed, fold) the peer gets the wall time that a reference unimri run (normally
the unified approach) spent training that fold — the sum of its per-epoch ``seconds``,
which include per-epoch validation — and trains whole epochs at the final stage size until
that time is used up, validating after each epoch and keeping the weights of the best
validation loss on the fold's validation cases (as unimri's early stopping does). It is
then scored exactly like the unimri runs, on the fold's test cases of the same nested split
(whole cases at native resolution, :func:`unimri.runtime.scoring.evaluate_model`).

MONAI is optional: :func:`monai_available` says whether it is installed.
"""
from __future__ import annotations

import importlib.util
import math
import os
import time
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from unimri._atomic import atomic_write_json
from unimri.runtime import registry
from unimri.train.checkpoint import seed_everything
from unimri.train.config import TrainConfig
from unimri.train.datasets import StageCollate, infer_in_channels, infer_num_classes, make_dataset
from unimri.runtime.scoring import evaluate_model
from unimri.train.experiment import (MARKER, RUN_FORMAT, ExperimentResult, load_experiment_cases, nested_split,
                                     prepare_out_dir, write_reports)
from unimri.runtime.inference import InferenceSpec
from unimri.runtime.resize import resize_logits

PEER_LABEL = "MONAI UNet + DiceCE + Adam"


def monai_available() -> bool:
    """True when ``monai`` can be imported."""
    return importlib.util.find_spec("monai") is not None


class DivisiblePadded(torch.nn.Module):
    """Runs ``net`` on its input zero-padded (at the end of each spatial axis) to a multiple
    of ``k`` and crops the output back, as MONAI users do with ``DivisiblePad``: MONAI's
    UNet with four stride-2 levels needs sizes divisible by 16, and aspect-keeping stages
    or whole validation cases (e.g. 64x41, 57x37) are not."""

    def __init__(self, net: torch.nn.Module, k: int):
        super().__init__()
        self.net, self.k = net, int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *S) -> logits (B, K, *S)."""
        spatial = x.shape[2:]
        pad: list[int] = []
        for n in reversed(spatial):  # F.pad lists the last axis first
            pad += [0, -n % self.k]
        if not any(pad):
            return self.net(x)
        out = self.net(torch.nn.functional.pad(x, pad))
        return out[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]


def monai_unet(spatial_dims: int, in_channels: int, num_classes: int, features: int = 16) -> torch.nn.Module:
    """MONAI's tutorial UNet: channels (f, 2f, 4f, 8f, 16f), strides 2, two residual units;
    inputs of any size (padded to a multiple of 16, see :class:`DivisiblePadded`)."""
    from monai.networks.nets import UNet

    strides = (2, 2, 2, 2)
    net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
               channels=tuple(features * 2 ** i for i in range(5)), strides=strides, num_res_units=2)
    return DivisiblePadded(net, math.prod(strides))


def fold_budgets(reference: ExperimentResult, clock: str = "seconds") -> dict[int, float]:
    """{fold: training seconds} of a finished unimri run: the sum of its epochs' ``clock``
    (``"seconds"``: wall time, ``"cpu_seconds"``: the training process's CPU time)."""
    if clock not in ("seconds", "cpu_seconds"):
        raise ValueError(f"clock: expected 'seconds' or 'cpu_seconds', got {clock!r}")
    out: dict[int, float] = {}
    for h in reference.histories:
        out[int(h["fold"])] = out.get(int(h["fold"]), 0.0) + float(h[clock])
    return out


def run_monai_peer(cfg: TrainConfig, out_dir: str, budgets: dict[int, float], *, lr: float = 1e-3,
                   overwrite: bool = False, cases: Sequence[Any] | None = None,
                   max_epochs: int = 10_000, clock: str = "wall") -> ExperimentResult:
    """Train and evaluate the MONAI peer on ``cfg.selected_folds()`` of ``cfg``'s k-fold split.

    Args:
        cfg: the unimri run's configuration (dataset, folds, seed, final stage size and batch
            size, width ``features`` — default 16 — and normalisation are taken from it).
        out_dir: run folder (``unimri_run.json``, ``fold<k>/result.json``, metrics, plots).
        budgets: {fold: seconds} of training wall time per fold (:func:`fold_budgets`).
        lr: Adam learning rate (MONAI tutorials: 1e-3 for 2D, 1e-4 for 3D).
        max_epochs: safety cap on epochs per fold.
        clock: "wall" (``time.perf_counter``) or "cpu" (``time.process_time``: this
            process's CPU time, which other load on a shared machine does not inflate;
            use it with budgets in CPU seconds, e.g. from :func:`cpu_seconds_of_run`).

    Returns:
        ExperimentResult whose ``config`` is ``cfg`` with ``model="monai-unet"`` and
        ``loss="monai-dicece"`` (labels only; it is not a valid unimri config).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock: expected 'wall' or 'cpu', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    if not monai_available():
        raise ValueError("peer: the MONAI peer needs the optional package monai (pip install monai)")
    from monai.losses import DiceCELoss

    missing = [f for f in cfg.selected_folds() if f not in budgets]
    if missing:
        raise ValueError(f"budgets: no wall-time budget for fold(s) {missing}")
    cases = list(cases) if cases is not None else load_experiment_cases(cfg)
    num_classes, in_channels = infer_num_classes(cases), infer_in_channels(cases)
    by_id = {c.case_id: c for c in cases}
    prepare_out_dir(out_dir, overwrite=overwrite)
    atomic_write_json(os.path.join(out_dir, MARKER), {"kind": "peer:monai", "format": RUN_FORMAT})
    splits = nested_split(cfg, cases, os.path.join(out_dir, "folds.json"))
    size, batch = cfg.stage_sizes[-1], cfg.stage_batch_sizes[-1]
    features = int(cfg.features or 16)
    label_cfg = cfg.replace(model="monai-unet", loss="monai-dicece", attention=None, stages=[list(size)])
    atomic_write_json(os.path.join(out_dir, "config.json"), {**label_cfg.to_dict(), "peer": PEER_LABEL,
                                                             "adam_lr": lr, "budgets_s": budgets,
                                                             "clock": clock})
    result = ExperimentResult(out_dir, label_cfg, [])
    for fold in cfg.selected_folds():
        split = splits[fold]
        seed_everything(cfg.seed + 1000 * fold)
        model = monai_unet(cfg.spatial_dims, in_channels, num_classes, features)
        loss_fn = DiceCELoss(softmax=True)  # targets are (soft) one-hot, as unimri's trainer feeds them
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        train_set = make_dataset([by_id[i] for i in split.train], cfg, num_classes, train=True)
        val_set = make_dataset([by_id[i] for i in split.val], cfg, num_classes, train=False)
        generator = torch.Generator().manual_seed(cfg.seed + 1000 * fold)
        train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=len(train_set) > batch,
                                  collate_fn=StageCollate(size, num_classes), generator=generator)
        val_loader = DataLoader(val_set, batch_size=batch, collate_fn=StageCollate(size, num_classes))
        history: list[dict[str, Any]] = []
        best, best_state, spent, epoch = math.inf, None, 0.0, 0
        while spent < budgets[fold] and epoch < max_epochs:
            t0 = now()
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            model.train()
            total, n = 0.0, 0
            for b in train_loader:
                loss = loss_fn(model(b["image"]), b["target"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, n = total + loss.item() * len(b["image"]), n + len(b["image"])
            val_loss, val_dsc = _validate(model, loss_fn, val_loader, num_classes)
            seconds = now() - t0
            spent += seconds
            improved = val_loss < best
            if improved:
                best = val_loss
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append({"event": "epoch", "fold": fold, "stage": 0, "size": list(size), "epoch": epoch,
                            "stage_epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss,
                            "val_dsc": val_dsc, "lr": lr, "best": improved, "seconds": round(seconds, 3)})
            epoch += 1
        if best_state is not None:
            model.load_state_dict(best_state)
        modalities = {(c.meta or {}).get("modality") for c in cases}
        spec = InferenceSpec(cfg.spatial_dims, tuple(size), num_classes, in_channels, cfg.slice_axis,
                             cfg.patch, cfg.normalize, modalities.pop() if len(modalities) == 1 else None)
        evaluation = evaluate_model(model, [by_id[i] for i in split.test], spec, "cpu", cfg.normalize,
                                    progress=False)
        metrics = {"fold": fold, "split": "test", "n_test": len(split.test), **evaluation.summary,
                   "epochs": epoch, "seconds": round(spent, 3), "budget_s": round(budgets[fold], 3)}
        os.makedirs(os.path.join(out_dir, f"fold{fold}"), exist_ok=True)
        atomic_write_json(os.path.join(out_dir, f"fold{fold}", "result.json"),
                          {"metrics": metrics, "history": history, "per_case": evaluation.per_case,
                           "cases": {"train": split.train, "val": split.val, "test": split.test}})
        result.folds.append(metrics)
        result.histories.extend(history)
        if not result.examples:
            result.examples = evaluation.examples
    write_reports(result)
    return result


def cpu_seconds_of_run(cfg: TrainConfig, out_dir: str, fold: int) -> tuple[float, ExperimentResult]:
    """Train ``cfg``'s fold ``fold`` with unimri and return (CPU seconds it took, result).

    The CPU time of this process (``time.process_time``) over the run: a budget that
    other load on a shared machine does not inflate, for :func:`run_monai_peer` with
    ``clock="cpu"``. Run it with one intra-op thread so that CPU time ≈ quiet wall time.
    """
    from unimri.train.experiment import run_experiment

    t0 = time.process_time()
    result = run_experiment(cfg.replace(fold_indices=[fold]), out_dir, overwrite=True)
    return time.process_time() - t0, result


@torch.no_grad()
def _validate(model: torch.nn.Module, loss_fn: torch.nn.Module, loader: DataLoader,
              num_classes: int) -> tuple[float, float]:
    """Validation loss at the training size and foreground DSC at native resolution (micro)."""
    model.eval()
    total, n = 0.0, 0
    counts = torch.zeros((num_classes, 4), dtype=torch.float64)
    for b in loader:
        logits = model(b["image"])
        total, n = total + loss_fn(logits, b["target"]).item() * len(b["image"]), n + len(b["image"])
        for i, label in enumerate(b["label"]):
            pred = resize_logits(logits[i:i + 1], label.shape).argmax(1)[0]
            counts += registry.class_counts(pred, label, num_classes).double()
    dsc = registry.dice_from_counts(counts)[1:]
    return total / max(n, 1), float(torch.nanmean(dsc)) if dsc.numel() else float("nan")
