"""How close each fused CUDA op comes to the hardware: one table per GPU run.

For the loss (logits (8, 2, 512²), int64 labels) and the attention gate (x (8, 64, 128²),
g (8, 128, 64²), 32 inter channels), in float32 and bfloat16, forward + backward:

* modelled bytes of the Triton route (:mod:`unimri_kernels.triton.traffic`, from the launches
  recorded on meta tensors) and the launch grids (fewest programs of any pixel-sweep launch);
* on a GPU: median time (CUDA events), achieved bandwidth = modelled bytes / time, as a
  fraction of a device-to-device copy measured in the same run; the time of
  ``torch.compile`` of the PyTorch reference and the speed-up over it; kernel launches and
  host synchronisations per call counted by the PyTorch profiler (no Nsight), for the op
  and for the loss module users call;
* the half-precision ``tl.dot`` path: the bfloat16 gate's outputs and input gradients
  against the float64 reference (max error relative to the largest reference value).

Without a GPU (``--dry-run``, or no CUDA) only the model columns are filled and the rest
say "not measured". Writes ``<out>/roofline.csv`` and ``<out>/roofline.md``.

    python benchmarks/gpu_roofline.py --out benchmarks/results/gpu_check
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from typing import Callable

import torch

LOSS_SHAPE = dict(batch=8, classes=2, spatial=(512, 512))
GATE_SHAPE = dict(batch=8, cx=64, cg=128, ci=32, size=(128, 128), g_size=(64, 64), subsample=2)
DTYPES = ("float32", "bfloat16")
#: bfloat16 gate vs float64 reference: max |error| / max |reference| allowed (8-bit mantissa
#: inputs, fp32 accumulation over 64-128 channels)
BF16_TOLERANCE = 3e-2
NOT_MEASURED = "not measured"
FIELDS = ["op", "dtype", "launches_model", "min_programs", "model_MB", "time_us", "achieved_GBps",
          "copy_fraction", "compiled_ref_us", "speedup_vs_compiled", "op_launches", "op_syncs",
          "module_launches", "module_syncs", "bf16_max_rel_error"]


# ----------------------------------------------------------------------------- model (meta)
def loss_model(dtype: str) -> tuple[list, int]:
    from unimri_kernels.compile_check import loss_route_launches
    from unimri_kernels.triton.traffic import route_bytes

    rec = loss_route_launches(LOSS_SHAPE["batch"], LOSS_SHAPE["classes"], LOSS_SHAPE["spatial"],
                              getattr(torch, dtype), torch.int64)[0]
    return rec, route_bytes(rec)


def gate_model(dtype: str) -> tuple[list, int]:
    from unimri_kernels.compile_check import GateProblem, launches_of
    from unimri_kernels.triton.traffic import route_bytes

    rec = launches_of(GateProblem(**GATE_SHAPE, dtype=dtype))
    return rec, route_bytes(rec)


def model_row(op: str, dtype: str) -> dict:
    rec, nbytes = (loss_model if op == "loss" else gate_model)(dtype)
    sweeps = [ln.grid[0] for ln in rec if ln.name != "_ufl_finish_kernel"]  # finish: one program a row
    return {"op": op, "dtype": dtype, "launches_model": len(rec), "min_programs": min(sweeps),
            "model_MB": round(nbytes / 1e6, 2), **{k: NOT_MEASURED for k in FIELDS[5:]}}


# ----------------------------------------------------------------------------- GPU measurements
def cuda_time(fn: Callable[[], None], iters: int = 20, warmup: int = 5) -> float:
    """Median seconds of ``fn`` over ``iters`` calls, CUDA events around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / cuda_time(lambda: dst.copy_(src))


def launches_and_syncs(fn: Callable[[], None]) -> tuple[int, int]:
    """(kernel launches, host synchronisations) of one call, from the PyTorch profiler's CUDA
    runtime events."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    launches = sum("LaunchKernel" in n for n in names)  # cudaLaunchKernel(ExC), cuLaunchKernel(Ex)
    # a host read (.item(), bool(tensor)) is a device-to-host copy followed by a stream sync; the
    # window's own torch.cuda.synchronize() is a cudaDeviceSynchronize, not counted
    syncs = sum(n in ("cudaStreamSynchronize", "cudaEventSynchronize") for n in names)
    return launches, syncs


def loss_calls(dtype: str):
    """(op call, module call, compiled reference call), each forward + backward."""
    from unimri.losses import UnifiedFocalLoss
    from unimri_kernels.ops.unified_focal_loss import unified_focal_loss_autograd
    from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference

    b, c, (h, w) = LOSS_SHAPE["batch"], LOSS_SHAPE["classes"], LOSS_SHAPE["spatial"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn((b, c, h, w), generator=gen, device="cuda", dtype=getattr(torch, dtype),
                         requires_grad=True)
    target = torch.randint(0, c, (b, h, w), generator=gen, device="cuda")
    module = UnifiedFocalLoss()
    params = module.class_params(c).tensor(logits.device)
    flat, flat_t = logits.view(b, c, -1), target.view(b, -1)
    args = (params, float(module.fp_weight), float(module.fn_weight), float(module.smooth), -100, False)
    compiled = torch.compile(unified_focal_loss_reference)

    def op():
        unified_focal_loss_autograd(flat, flat_t, *args, True, False).mean().backward()

    def mod():
        module(logits, target).backward()

    def ref():
        compiled(flat, flat_t, *args).mean().backward()

    return op, mod, ref


def gate_calls(dtype: str):
    """(op call, compiled reference call, bf16 error check), each forward + backward."""
    from unimri_kernels.dispatch import use_backend
    from unimri_kernels.ops.attention_gate import GateParams, gate
    from unimri_kernels.reference.attention_gate import attention_gate_reference

    s = GATE_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float64) * scale)

    leaves64 = [rnd(s["batch"], s["cx"], *s["size"]), rnd(s["batch"], s["cg"], *s["g_size"]),
                rnd(s["ci"], s["cx"], s["subsample"], s["subsample"], scale=0.5), rnd(s["ci"], s["cg"], scale=0.5),
                rnd(s["ci"], scale=0.5), rnd(s["ci"]), rnd(1, scale=0.5)]
    leaves = [t.to(getattr(torch, dtype)).requires_grad_(True) for t in leaves64]
    cot = [rnd(s["batch"], s["cx"], *s["size"]), rnd(s["batch"], 1, *s["size"])]
    cot_d = [t.to(getattr(torch, dtype)) for t in cot]
    compiled = torch.compile(attention_gate_reference)

    def op():
        with use_backend("triton"):
            y, alpha = gate(leaves[0], leaves[1], GateParams(*leaves[2:], s["subsample"], 1.0))
        torch.autograd.backward((y, alpha), cot_d)

    def ref():
        y, alpha = compiled(*leaves, s["subsample"], 1.0)
        torch.autograd.backward((y, alpha), cot_d)

    def bf16_error() -> float:
        exact = [t.detach().clone().requires_grad_(True) for t in leaves64]
        y64, a64 = attention_gate_reference(*exact, s["subsample"], 1.0)
        g64 = torch.autograd.grad((y64, a64), exact, cot)
        for t in leaves:
            t.grad = None
        with use_backend("triton"):
            y, alpha = gate(leaves[0], leaves[1], GateParams(*leaves[2:], s["subsample"], 1.0))
        got = torch.autograd.grad((y, alpha), leaves, cot_d)
        pairs = [(y, y64), (alpha, a64), *zip(got, g64)]
        return max(float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in pairs)

    return op, ref, bf16_error


def measure(row: dict, copy_bps: float) -> dict:
    op_name, dtype = row["op"], row["dtype"]
    if op_name == "loss":
        op, mod, ref = loss_calls(dtype)
        extra = None
    else:
        op, ref, extra = gate_calls(dtype)
        mod = None
    t = cuda_time(op)
    t_ref = cuda_time(ref)
    achieved = row["model_MB"] * 1e6 / t
    out = dict(row, time_us=round(t * 1e6, 1), achieved_GBps=round(achieved / 1e9, 1),
               copy_fraction=round(achieved / copy_bps, 3), compiled_ref_us=round(t_ref * 1e6, 1),
               speedup_vs_compiled=round(t_ref / t, 2))
    out["op_launches"], out["op_syncs"] = launches_and_syncs(op)
    if mod is not None:
        out["module_launches"], out["module_syncs"] = launches_and_syncs(mod)
    else:
        out["module_launches"] = out["module_syncs"] = "-"
    out["bf16_max_rel_error"] = round(extra(), 5) if extra is not None and dtype == "bfloat16" else "-"
    return out


# ----------------------------------------------------------------------------- report
def markdown(rows: list[dict], device: str, copy_bps: float | None) -> str:
    lines = ["# Fused CUDA ops against the hardware", "",
             f"Device: {device}; device-to-device copy: "
             + (f"{copy_bps / 1e9:.0f} GB/s (read + write, same run)." if copy_bps else f"{NOT_MEASURED}."),
             "Loss: logits (8, 2, 512²), int64 labels. Gate: x (8, 64, 128²), g (8, 128, 64²), 32 inter "
             "channels. Forward + backward. Model bytes: every tensor argument of every Triton launch "
             "moved once (unimri_kernels/triton/traffic.py); achieved = model bytes / median time. "
             "Syncs: host synchronisations per call (profiler). "
             f"bf16 error: max |error| / max |float64 reference| over outputs and input gradients "
             f"(tolerance {BF16_TOLERANCE}).", "",
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "gpu_check"))
    ap.add_argument("--dry-run", action="store_true", help="model columns only (no GPU needed)")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.dry_run
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        print(f"gpu_roofline: triton is not installed ({exc}): the Triton routes cannot be modelled or run")
        return 0
    rows = [model_row(op, dt) for op in ("loss", "gate") for dt in DTYPES]
    copy_bps = None
    device = "no GPU (model only)"
    if gpu:
        device = torch.cuda.get_device_name(0)
        copy_bps = copy_bandwidth()
        rows = [measure(r, copy_bps) for r in rows]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "roofline.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, device, copy_bps)
    with open(os.path.join(args.out, "roofline.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
    bad = [r for r in rows if isinstance(r["bf16_max_rel_error"], float) and r["bf16_max_rel_error"] > BF16_TOLERANCE]
    if bad:
        print(f"gpu_roofline: bf16 gate error above {BF16_TOLERANCE}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
