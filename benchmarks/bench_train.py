"""Training-step options on the five backbones with SAS and the unified loss: which of
``unimri train --amp bf16``, ``--channels-last`` and ``--compile`` pay off on this machine,
against the eager baseline a user would otherwise run (the same network with Oktay's
attention block and the loss written in plain PyTorch modules).

Per backbone, every variant trains a copy of the same weights; variants are timed step by
step in turn (interleaved) and medians reported: step time, images/s, and the speed-up over
unimri's default (fused ops, eager, float32, contiguous). ``--compile`` is timed after its
compilation (done in the untimed warm-up step; its duration is recorded as a row).

Sizes: 2D batch 4 of 1 x 128 x 128, width 16 (quick: batch 2 of 1 x 64 x 64, width 8).
``UNIMRI_BENCH_MODELS=unet,fcn`` restricts the backbones (e.g. to split a run);
The compiled variant is measured only with ``run.py --compile`` (``UNIMRI_BENCH_COMPILE=1``):
inductor builds C++ for minutes.
"""
from __future__ import annotations

import os
import time

import torch
from tqdm import tqdm

from harness import compile_wanted
from trainsteps import (Variant, cpu_isa, interleaved_times, machine_load, make_step, problem,
                        record_times, unified_loss)
from unimri.models import MODEL_NAMES, create_model

VARIANTS = [
    Variant("eager PyTorch modules (Oktay block + plain loss)", eager_modules=True),
    Variant("unimri fused (default)"),
    Variant("unimri + channels-last", channels_last=True),
    Variant("unimri + bf16 autocast", amp="bf16"),
    Variant("unimri + bf16 + channels-last", amp="bf16", channels_last=True),
    Variant("unimri + compile", compile=True),
]
DEFAULT = "unimri fused (default)"


def _models() -> list[str]:
    wanted = os.environ.get("UNIMRI_BENCH_MODELS")
    if not wanted:
        return list(MODEL_NAMES)
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"UNIMRI_BENCH_MODELS: unknown backbone(s) {unknown}; known: {list(MODEL_NAMES)}")
    return names


def run(rec, quick: bool, device: str) -> None:
    features, batch, spatial = (8, 2, (64, 64)) if quick else (16, 4, (128, 128))
    repeat = 2 if quick else 4
    with_compile = compile_wanted()
    variants = [v for v in VARIANTS if with_compile or not v.compile]
    size = f"2d b{batch} 1x" + "x".join(map(str, spatial)) + f" width {features}"
    x, y = problem(spatial, batch, device)
    isa = cpu_isa()
    for name in tqdm(_models(), desc="bench_train"):
        op = f"{name}+sas"
        torch.manual_seed(0)
        model = create_model(name, spatial_dims=2, features=features, attention="sas").to(device)
        steps = {v.name: make_step(model, unified_loss(), x, y, v, device) for v in variants}
        compile_s = {}
        for v in variants:  # first step outside the timings: compilation, allocator warm-up
            t0 = time.perf_counter()
            steps[v.name]()
            compile_s[v.name] = time.perf_counter() - t0
        load = machine_load()
        times = interleaved_times(steps, repeat, device, warmup=1, desc=op)
        note = f"{isa}; {load} (shared machine)"
        medians = {v: record_times(rec, op, v, size, times[v], batch, note) for v in steps}
        for v in steps:
            if v != DEFAULT:
                rec.add(op, f"{v} vs default", "train_step", "speedup", "x", size,
                        medians[DEFAULT] / medians[v], note="default time / this time")
        for v in variants:
            if v.compile:
                rec.add(op, v.name, "first_step", "compile_time", "s", size, compile_s[v.name],
                        note="first step incl. torch.compile (inductor)")
        del model, steps
