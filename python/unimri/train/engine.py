"""Training one fold: progressive-resizing stages, early stopping, AMP, DDP, checkpoints.

Per stage (size, batch size, max epochs) a fresh SGD optimizer (and schedule) starts
from the weights the previous stage ended with (its best validation-loss epoch): the
paper's transfer learning between resizing runs. Every epoch writes ``last.pt``
atomically with all state needed to continue exactly; an improvement also writes
``best.pt``. ``TrainConfig.stop_after_epochs`` stops a run after that many epochs as if
it had been killed (raises :class:`TrainingInterrupted`), which the resume test uses.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unimri.runtime import registry
from unimri.train.checkpoint import (capture_rng, check_model_spec, load_checkpoint, load_weights, restore_rng,
                                     save_checkpoint, seed_everything)
from unimri.train.config import TrainConfig
from unimri.train.datasets import StageCollate, make_dataset
from unimri.train.distributed import DistContext, ShardedBatchSampler, all_reduce_sum, broadcast_flag
from unimri.data.transforms import intensity_profile
from unimri.runtime.precision import autocast_for, grad_scaler_for, resolve_amp
from unimri.runtime.inference import InferenceSpec
from unimri.train.runlog import JsonlLog


class TrainingInterrupted(RuntimeError):
    """Raised when ``stop_after_epochs`` ends a run early (a simulated kill)."""


class NonFiniteLossError(ValueError):
    """Raised at the first NaN/inf loss, before the optimizer step and before any checkpoint
    of that epoch, so no non-finite weights are ever written."""


def _check_loss(loss: torch.Tensor, where: str, case_ids: Sequence[str], ctx: DistContext) -> None:
    """NonFiniteLossError on every rank as soon as one rank's loss is not finite (a rank that
    raised alone would leave the others waiting in the gradient all-reduce)."""
    finite = bool(torch.isfinite(loss.detach()).all())
    if ctx.distributed:
        flag = torch.tensor([0.0 if finite else 1.0], device=_reduce_device(ctx))
        if float(all_reduce_sum(flag, ctx).item()) > 0 and finite:
            raise NonFiniteLossError(f"training stopped: the {where} is not finite on another rank; "
                                     f"no weights of this epoch were written")
    if not finite:
        cases = ", ".join(repr(c) for c in list(case_ids)[:5])
        cases = f" (cases {cases})" if cases else ""
        raise NonFiniteLossError(
            f"training stopped: the {where} is {float(loss.detach().float().sum())}{cases}; no "
            f"weights of this epoch were written. Look for NaN/inf voxels (unimri datasets PATH) or "
            f"lower the learning rate (--lr)")


def check_stage_sizes(model: nn.Module, in_channels: int, num_classes: int,
                      sizes: Sequence[Sequence[int]], model_name: str,
                      batch_sizes: Sequence[int] | None = None) -> None:
    """ValueError if the model cannot take a stage's input size at its batch size.

    A shape-only dry run (meta tensors, training mode, so that normalisation layers that
    need more than one value per channel complain as they would in training); an op
    without a meta kernel falls back to a real forward pass.
    """
    batch_sizes = list(batch_sizes) if batch_sizes is not None else [2] * len(sizes)
    for size, batch in zip(sizes, batch_sizes):
        shape = (batch, in_channels, *size)
        try:
            try:
                probe = copy.deepcopy(model).to("meta").train()
                out = probe(torch.empty(shape, device="meta"))
            except NotImplementedError:
                probe = copy.deepcopy(model).train()
                with torch.no_grad():
                    out = probe(torch.zeros(shape))
        except Exception as exc:  # noqa: BLE001 - any failure means this size cannot be used
            raise ValueError(f"stages: model {model_name!r} cannot take input size {tuple(size)} at batch "
                             f"size {batch} ({type(exc).__name__}: {exc})") from None
        expected = (batch, num_classes, *size)
        if tuple(out.shape) != expected:
            raise ValueError(f"stages: model {model_name!r} maps input size {tuple(size)} to output "
                             f"shape {tuple(out.shape)}, expected {expected}")


def _make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 - e / max(1, epochs)) ** 0.9)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    raise ValueError(f"schedule: expected one of ('none', 'cosine', 'poly', 'plateau'), got {name!r}")


@dataclass
class _Progress:
    """Early-stopping state of the running stage and the epoch count across stages."""

    global_epoch: int = 0
    best: float = math.inf
    bad: int = 0
    best_weights: dict[str, torch.Tensor] | None = None

    def start_stage(self) -> None:
        self.best, self.bad, self.best_weights = math.inf, 0, None

    def update(self, val_loss: float, min_delta: float, model: nn.Module) -> bool:
        """Record one epoch's validation loss; True (and the weights kept) if it improved."""
        improved = val_loss < self.best - min_delta
        if improved:
            self.best, self.bad = val_loss, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1
        return improved


class FoldTrainer:
    """Trains one cross-validation fold in ``fold_dir`` (``last.pt``, ``best.pt``, ``model.pt``)."""

    def __init__(self, cfg: TrainConfig, fold: int, train_cases: list, val_cases: list,
                 fold_dir: str, ctx: DistContext, log: JsonlLog, in_channels: int, num_classes: int):
        self.cfg, self.fold, self.fold_dir, self.ctx, self.log = cfg, fold, fold_dir, ctx, log
        self.in_channels, self.num_classes = in_channels, num_classes
        self.spec = cfg.model_spec(in_channels, num_classes)
        self.inference = InferenceSpec(cfg.spatial_dims, cfg.stage_sizes[-1], num_classes, in_channels,
                                       cfg.slice_axis, cfg.patch, cfg.normalize,
                                       _modality(train_cases),
                                       intensity=intensity_profile(train_cases, cfg.normalize))
        self.train_set: Dataset = make_dataset(train_cases, cfg, num_classes, train=True)
        self.val_set: Dataset = make_dataset(val_cases, cfg, num_classes, train=False)
        self.history: list[dict[str, Any]] = []
        self.diverged: dict[str, Any] | None = None  # where a non-finite loss ended the training
        self.paths = {k: os.path.join(fold_dir, f"{k}.pt") for k in ("last", "best", "model")}

    # ------------------------------------------------------------------ pieces
    def _loader(self, dataset: Dataset, size: Sequence[int], batch_size: int, train: bool,
                seed: int) -> tuple[DataLoader, ShardedBatchSampler]:
        world = self.ctx.world_size
        sampler = ShardedBatchSampler(len(dataset), batch_size, self.ctx.rank, world, shuffle=train,
                                      seed=seed, drop_last=train)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                            collate_fn=StageCollate(size, self.num_classes),
                            pin_memory=self.ctx.device.type == "cuda",
                            persistent_workers=False)
        return loader, sampler

    def _checkpoint_state(self, model: nn.Module, optimizer, scheduler, scaler, stage: int,
                          next_epoch: int, global_epoch: int, best: float, bad: int) -> dict[str, Any]:
        return {
            "kind": "last", "model_spec": self.spec, "inference": self.inference.to_dict(),
            "config": self.cfg.to_dict(), "fold": self.fold, "stage": stage, "next_epoch": next_epoch,
            "global_epoch": global_epoch, "best_val_loss": best, "bad_epochs": bad,
            "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "history": self.history, "rng": capture_rng(),
        }

    def weights_state(self, model: nn.Module, kind: str, **extra: Any) -> dict[str, Any]:
        return {"kind": kind, "model_spec": self.spec, "inference": self.inference.to_dict(),
                "config": self.cfg.to_dict(), "fold": self.fold, "model": _unwrap(model).state_dict(),
                **extra}

    def _to_input(self, image: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        """A batch of images on the device, channels-last when the run asks for it."""
        image = image.to(self.ctx.device, non_blocking=non_blocking)
        if self.cfg.channels_last:
            image = image.contiguous(memory_format=memory_format_for(self.cfg.spatial_dims))
        return image

    # ------------------------------------------------------------------ loop
    def run(self, resume: bool = False, epochs_done_in_run: list[int] | None = None) -> nn.Module:
        """Train all stages; returns the final (best of the last stage) unwrapped model.

        ``epochs_done_in_run`` is a one-element counter shared across folds so that
        ``stop_after_epochs`` counts the epochs this process ran in total.
        """
        counter = epochs_done_in_run if epochs_done_in_run is not None else [0]
        seed_everything(self.cfg.seed + 1000 * self.fold)
        model, loss_fn = self._build_model_and_loss()
        state = self._load_resume_state(model) if resume else None
        net = self._training_wrapper(model)
        progress = _Progress(global_epoch=state["global_epoch"] if state else 0)
        for stage in range(state["stage"] if state else 0, len(self.cfg.stage_sizes)):
            if self._run_stage(stage, model, net, loss_fn, state, progress, counter):
                break  # diverged: no later stage
            state = None  # only the first stage run continues from the checkpoint
        if self.ctx.is_main:
            save_checkpoint(self.paths["model"], self.weights_state(model, "model", history=self.history))
        return model

    def _build_model_and_loss(self) -> tuple[nn.Module, nn.Module]:
        model = registry.create_model(self.spec).to(self.ctx.device)
        loss_fn = registry.create_loss(self.cfg.loss, **self.cfg.loss_kwargs)
        if hasattr(loss_fn, "to"):
            loss_fn = loss_fn.to(self.ctx.device)
        return model, loss_fn

    def _load_resume_state(self, model: nn.Module) -> dict[str, Any] | None:
        """The ``last.pt`` checkpoint (its weights loaded into ``model``), or None if there is none."""
        if not os.path.exists(self.paths["last"]):
            return None
        state = load_checkpoint(self.paths["last"], map_location="cpu")
        check_model_spec(state["model_spec"], self.spec, self.paths["last"])
        load_weights(model, state["model"], self.paths["last"])
        self.history = list(state["history"])
        return state

    def _training_wrapper(self, model: nn.Module) -> nn.Module:
        """``model`` in its training memory format, wrapped for DDP and/or torch.compile."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.channels_last:
            model = model.to(memory_format=memory_format_for(cfg.spatial_dims))
        net: nn.Module = model
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)  # the unimri ops are opaque custom ops: no graph breaks
        return net

    def _restore_stage(self, state: dict[str, Any], optimizer, scheduler, scaler,
                       progress: "_Progress") -> int:
        """Optimizer, schedule, scaler, early-stopping state and RNG of the interrupted stage;
        returns the epoch to continue from."""
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        progress.best, progress.bad = state["best_val_loss"], state["bad_epochs"]
        if os.path.exists(self.paths["best"]):
            progress.best_weights = load_checkpoint(self.paths["best"])["model"]
        restore_rng(state["rng"])
        return state["next_epoch"]

    def _run_stage(self, stage: int, model: nn.Module, net: nn.Module, loss_fn: nn.Module,
                   state: dict[str, Any] | None, progress: "_Progress", counter: list[int]) -> bool:
        """One progressive-resizing stage: epochs until ``epochs`` or early stopping, then the
        stage's best weights are loaded into ``model`` (carried to the next stage). True when
        the loss diverged and ``on_nonfinite="end"`` ended the training."""
        cfg, ctx = self.cfg, self.ctx
        size, batch_size = cfg.stage_sizes[stage], cfg.stage_batch_sizes[stage]
        n_epochs, last_stage = cfg.stage_epochs[stage], stage == len(cfg.stage_sizes) - 1
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        scheduler = _make_scheduler(cfg.schedule, optimizer, n_epochs)
        amp = resolve_amp(cfg.amp, ctx.device)
        scaler = grad_scaler_for(ctx.device, amp)
        progress.start_stage()
        start_epoch = 0
        if state is not None:
            start_epoch = self._restore_stage(state, optimizer, scheduler, scaler, progress)
            if start_epoch >= n_epochs or progress.bad >= cfg.patience:
                start_epoch = n_epochs  # the stage had already ended when the run stopped
        train_loader, train_sampler = self._loader(self.train_set, size, batch_size, True,
                                                   cfg.seed + 1000 * self.fold + stage)
        val_loader, _ = self._loader(self.val_set, size, batch_size, False, 0)
        for epoch in range(start_epoch, n_epochs):
            t0, cpu0 = time.perf_counter(), time.process_time()
            train_sampler.set_epoch(epoch)
            _set_dataset_epoch(self.train_set, progress.global_epoch)
            try:
                train_loss = self._train_epoch(net, model, loss_fn, optimizer, scaler, train_loader,
                                               amp, f"fold {self.fold} stage {stage} {'x'.join(map(str, size))} "
                                                    f"epoch {epoch + 1}/{n_epochs}")
                val_loss, val_dsc = self._validate(net if cfg.compile and not ctx.distributed else model,
                                                   loss_fn, val_loader, amp)
            except NonFiniteLossError as exc:
                if cfg.on_nonfinite != "end":
                    raise
                self._end_diverged(model, progress, stage, epoch, exc)
                return True
            if scheduler is not None:
                scheduler.step(val_loss) if cfg.schedule == "plateau" else scheduler.step()
            improved = progress.update(val_loss, cfg.min_delta, model)
            record = {"event": "epoch", "fold": self.fold, "stage": stage, "size": list(size),
                      "epoch": progress.global_epoch, "stage_epoch": epoch, "train_loss": train_loss,
                      "val_loss": val_loss, "val_dsc": val_dsc, "lr": optimizer.param_groups[0]["lr"],
                      "best": improved, "seconds": round(time.perf_counter() - t0, 3),
                      # this process's CPU time: what the epoch costs whatever else loads the machine
                      "cpu_seconds": round(time.process_time() - cpu0, 3)}
            self.history.append(record)
            progress.global_epoch += 1
            counter[0] += 1
            stop = progress.bad >= cfg.patience
            if ctx.is_main:
                self.log.write(record)
                if improved:
                    save_checkpoint(self.paths["best"], self.weights_state(model, "best", stage=stage))
                save_checkpoint(self.paths["last"], self._checkpoint_state(
                    model, optimizer, scheduler, scaler, stage, epoch + 1, progress.global_epoch,
                    progress.best, progress.bad))
            if cfg.stop_after_epochs is not None and counter[0] >= cfg.stop_after_epochs \
                    and not (last_stage and (epoch + 1 == n_epochs or stop)):
                raise TrainingInterrupted(f"stopped after {counter[0]} epoch(s) (stop_after_epochs)")
            if broadcast_flag(stop, ctx):
                break
        if progress.best_weights is not None:
            model.load_state_dict(progress.best_weights)  # carry the stage's best weights forward
        return False

    def _end_diverged(self, model: nn.Module, progress: "_Progress", stage: int, epoch: int,
                      exc: NonFiniteLossError) -> None:
        """``on_nonfinite="end"``: the fold's training ends here with its best validation epoch
        so far (this stage's, else ``best.pt`` of an earlier stage, else the last finite
        weights: the loss is checked before the optimizer step); ``self.diverged`` says where."""
        weights = progress.best_weights
        if weights is None and os.path.exists(self.paths["best"]):
            weights = load_checkpoint(self.paths["best"])["model"]
        if weights is not None:
            model.load_state_dict(weights)
        self.diverged = {"stage": stage, "stage_epoch": epoch, "epoch": progress.global_epoch,
                         "kept": "best" if weights is not None else "last finite", "message": str(exc)}
        if self.ctx.is_main:
            self.log.write({"event": "diverged", "fold": self.fold, **self.diverged})
            print(f"fold {self.fold}: {exc} -- training ended there (on_nonfinite=end), "
                  f"{self.diverged['kept']} weights kept", flush=True)

    def _train_epoch(self, net: nn.Module, model: nn.Module, loss_fn: nn.Module, optimizer, scaler,
                     loader: DataLoader, amp: str, desc: str) -> float:
        from tqdm.auto import tqdm

        cfg, ctx = self.cfg, self.ctx
        net.train()
        total = torch.zeros(2, dtype=torch.float64)
        bar = tqdm(loader, desc=desc, leave=False, disable=not (cfg.progress and ctx.is_main))
        for batch in bar:
            image = self._to_input(batch["image"], non_blocking=True)
            target = batch["target"].to(ctx.device, non_blocking=True)
            n_local = image.shape[0]
            share = 1.0
            if ctx.distributed:  # weight by this rank's share of the global batch (exact mean)
                n_all = all_reduce_sum(torch.tensor([float(n_local)], device=_reduce_device(ctx)), ctx)
                share = n_local * ctx.world_size / float(n_all.item())
            with autocast_for(ctx.device, amp):
                logits = net(image)
            loss = loss_fn(logits.float(), target)
            _check_loss(loss, f"training loss ({desc})", batch["case_id"], ctx)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss * share).backward()
                scaler.unscale_(optimizer)
            else:
                (loss * share).backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.grad_clip))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            total += torch.tensor([loss.item() * n_local, n_local], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        total = all_reduce_sum(total.to(_reduce_device(ctx)), ctx).cpu()
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")

    @torch.no_grad()
    def _validate(self, model: nn.Module, loss_fn: nn.Module, loader: DataLoader, amp: str) -> tuple[float, float]:
        """Validation loss at the stage size and foreground DSC at native resolution (micro)."""
        from unimri.runtime.resize import resize_logits

        ctx, k = self.ctx, self.num_classes
        model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        counts = torch.zeros((k, 4), dtype=torch.float64)
        for batch in loader:
            image = self._to_input(batch["image"])
            with autocast_for(ctx.device, amp):
                logits = model(image)
            logits = logits.float()
            loss = loss_fn(logits, batch["target"].to(ctx.device))
            if not ctx.distributed:  # ranks may see different numbers of batches: checked below
                _check_loss(loss, f"validation loss (fold {self.fold})", batch["case_id"], ctx)
            total += torch.tensor([loss.item() * image.shape[0], image.shape[0]], dtype=torch.float64)
            for i, label in enumerate(batch["label"]):
                pred = resize_logits(logits[i:i + 1], label.shape).argmax(1)[0].cpu()
                counts += class_counts(pred, label, k)
        packed = all_reduce_sum(torch.cat([total, counts.flatten()]).to(_reduce_device(ctx)), ctx).cpu()
        total, counts = packed[:2], packed[2:].view(k, 4)
        if ctx.distributed:  # the all-reduced sum is non-finite on every rank alike
            _check_loss(total[0], f"validation loss (fold {self.fold}, all ranks)", [], DistContext())
        dsc = registry.dice_from_counts(counts)[1:]
        val_dsc = float(torch.nanmean(dsc)) if dsc.numel() else float("nan")
        return (float(total[0] / total[1]) if total[1] > 0 else float("nan")), val_dsc


def memory_format_for(spatial_dims: int) -> torch.memory_format:
    """channels_last for 2D models, channels_last_3d for 3D ones."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def class_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, 4) float64 [TP, FP, TN, FN] per class for one label-map pair (unimri.metrics)."""
    return registry.class_counts(pred, label, num_classes).double()


def _modality(cases: Sequence[Any]) -> str | None:
    """The cases' common ``meta['modality']`` (z-score masking depends on it), else None."""
    found = {(getattr(c, "meta", None) or {}).get("modality") for c in cases}
    return found.pop() if len(found) == 1 else None


def _reduce_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
