"""Compile every Triton kernel for real GPUs on a machine without one, with exactly the
arguments, dtypes and constexprs the CUDA launchers choose.

How: the launchers run on ``meta`` tensors (nothing is allocated; :func:`target_for` gives
``meta`` the CUDA configuration) while each kernel's ``run`` is replaced by a recorder
(:func:`capture_launches`). Each recorded launch is then specialised as the JIT would do
it on a device (``create_function_from_signature`` + ``_pack_args``: pointer alignment,
integer specialisation, options such as ``num_warps``) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` by the bundled
ptxas. Registers, local memory (spills) and shared memory are read from the cubin
(``cuobjdump -res-usage``) and the metadata; float atomics from the TTIR.

Compiling needs the real ``JITFunction`` objects, so it must run in a process without
``TRITON_INTERPRET=1`` (``python -m unimri_kernels.compile_check``); capturing
launches works in either mode.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
import triton
import triton.language as tl

from unimri_kernels.ops.attention_gate import GateShape

KERNEL_MODULES = ("unimri_kernels.triton.unified_focal_loss",
                  "unimri_kernels.triton.gate_kernels")
ARCHS = (80, 90, 100)
#: Shared memory one block may use (bytes, opt-in maximum) per architecture.
MAX_SHARED = {80: 166912, 90: 232448, 100: 232448}


def kernel_objects() -> dict[str, object]:
    """Every launchable kernel (name -> JITFunction or InterpretedFunction)."""
    out = {}
    for mod_name in KERNEL_MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "arg_names") and hasattr(obj, "run"):
                out[name] = obj
    return out


@dataclass
class Launch:
    """One recorded launch: kernel, grid and the exact call arguments."""

    name: str
    fn: object
    grid: tuple
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def capture_launches() -> Iterator[list[Launch]]:
    """Record (and do not run) every kernel launch made inside the block."""
    records: list[Launch] = []
    kernels = kernel_objects()
    saved = {name: k.__dict__.get("run") for name, k in kernels.items()}

    def recorder(name, fn):
        def run(*args, grid, warmup, **kwargs):
            records.append(Launch(name, fn, tuple(grid), args, kwargs))
        return run

    for name, k in kernels.items():
        k.run = recorder(name, k)
    try:
        yield records
    finally:
        for name, k in kernels.items():
            if saved[name] is None:
                del k.run
            else:
                k.run = saved[name]


@contextlib.contextmanager
def torch_flags(deterministic: bool, allow_tf32: bool) -> Iterator[None]:
    old_det = torch.are_deterministic_algorithms_enabled()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


# ----------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class LossProblem:
    """Logits (batch, classes, *spatial) of ``dtype``; index or soft targets."""

    batch: int
    classes: int
    spatial: tuple[int, ...]
    dtype: str
    index_target: bool = True

    def launch(self) -> None:
        from unimri_kernels.triton.unified_focal_loss import unified_focal_loss_triton

        dt = getattr(torch, self.dtype)
        n = 1
        for s in self.spatial:
            n *= s
        logits = torch.empty((self.batch, self.classes, n), dtype=dt, device="meta")
        if self.index_target:
            target = torch.empty((self.batch, n), dtype=torch.int64, device="meta")
        else:
            target = torch.empty_like(logits)
        params = torch.empty((4, self.classes), dtype=torch.float64, device="meta")
        unified_focal_loss_triton(logits, target, params, 0.4, 0.6, 1e-6, -100, False, True)


@dataclass(frozen=True)
class GateProblem(GateShape):
    """A :class:`GateShape` in ``dtype``, with the gate's focal exponent."""

    dtype: str
    focal: float = 1.0

    def launch(self) -> None:
        from unimri_kernels.triton.attention_gate import (attention_gate_backward,
                                                          attention_gate_forward)

        dt = getattr(torch, self.dtype)
        d = len(self.size)

        def t(*shape):
            return torch.empty(shape, dtype=dt, device="meta")

        x, g = t(self.batch, self.cx, *self.size), t(self.batch, self.cg, *self.g_size)
        weights = (t(self.ci, self.cx, *(self.subsample,) * d), t(self.ci, self.cg), t(self.ci),
                   t(self.ci), t(1))
        kw = dict(subsample=self.subsample, focal=self.focal)
        attention_gate_forward(x, g, *weights, **kw)
        alpha = t(self.batch, 1, *self.size)
        attention_gate_backward(torch.empty_like(x), alpha, x, g, *weights, **kw)


def loss_route_launches(batch: int, classes: int, spatial: Sequence[int], dtype: torch.dtype,
                        target_dtype: torch.dtype, pooled: bool = False):
    """Forward + backward of the loss's eager Triton route on meta tensors: (launches, how many
    of them the forward made, logits (batch, classes, N) with its .grad, target, loss)."""
    from unimri_kernels.ops.unified_focal_loss import _TritonTwoSweeps

    n = 1
    for s in spatial:
        n *= s
    logits = torch.empty((batch, classes, n), dtype=dtype, device="meta", requires_grad=True)
    shape = (batch, classes, n) if target_dtype.is_floating_point else (batch, n)
    target = torch.empty(shape, dtype=target_dtype, device="meta")
    params = torch.empty((4, classes), dtype=torch.float64, device="meta")
    with capture_launches() as rec:
        loss = _TritonTwoSweeps.apply(logits, target, params, 0.4, 0.6, 1e-6, -100, pooled)
        n_forward = len(rec)
        loss.mean().backward()
    return rec, n_forward, logits, target, loss


def launches_of(problem, deterministic: bool = False, allow_tf32: bool = False) -> list[Launch]:
    """The launches ``problem`` makes on CUDA under these torch settings."""
    with torch_flags(deterministic, allow_tf32), capture_launches() as rec:
        problem.launch()
    return rec


def loss_matrix(full: bool) -> list[LossProblem]:
    """Loss problems: every BLOCK_C for C in 1..16, 2D/3D, odd and large sizes, int64
    offsets, every dtype, index and soft targets."""
    classes = (1, 2, 3, 4, 5, 8, 9, 16) if full else (2, 3, 5, 9, 16)
    spatial = [(7, 9), (5, 7, 9), (512, 512), (96, 96, 96)] if full else [(7, 9), (33, 47, 5)]
    out = [LossProblem(2, c, s, dt, idx) for c in classes for s in spatial
           for dt in ("float32", "float16", "bfloat16", "float64") for idx in (True, False)]
    out += [LossProblem(1, 16, (512, 512, 512), dt) for dt in ("float32", "bfloat16")]
    return out


def gate_matrix(full: bool) -> list[GateProblem]:
    """Gate problems: 2D/3D, inter channels 8..256, odd sizes, g on/off theta's grid."""
    cis = (8, 16, 32, 64, 128, 256) if full else (8, 64, 256)
    out = []
    for ci in cis:
        cx, cg = max(1, ci // 2), ci
        for dt in ("float32", "float16", "bfloat16", "float64"):
            out.append(GateProblem(2, cx, cg, ci, (67, 45), (17, 12), 2, dt))
            out.append(GateProblem(1, cx, cg, ci, (13, 11, 9), (6, 5, 4), 2, dt, 2.0))
            if full:
                out.append(GateProblem(2, cx, cg, ci, (128, 128), (64, 64), 2, dt))
                out.append(GateProblem(1, cx, cg, ci, (32, 32, 32), (8, 8, 8), 2, dt))
                out.append(GateProblem(1, 3, 5, ci, (31, 29), (31, 29), 1, dt, 0.5))
    out.append(GateProblem(1, 128, 64, 32, (256, 256, 256), (64, 64, 64), 2, "bfloat16"))
    return out


# ----------------------------------------------------------------------------- compile
@dataclass
class Compiled:
    """What ptxas made of one launch configuration on one architecture."""

    kernel: str
    arch: int
    config: str
    num_warps: int
    n_regs: int = -1
    n_spills: int = -1
    shared: int = -1
    atomics: int = -1
    seconds: float = 0.0
    error: str = ""
    problems: list = field(default_factory=list)


_ARG_DTYPES = re.compile(r"^\*")


def _specialise(launch: Launch, arch: int):
    """(ASTSource, options) the JIT would build for this launch on ``arch``."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, spec, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    return ASTSource(fn, signature, constexprs, attrs), options, target, signature, constexprs


def config_key(launch: Launch) -> str:
    """Readable identity of a launch configuration: argument types and constexprs."""
    _, options, _, signature, constexprs = _specialise(launch, 90)
    names = list(signature)
    types = ",".join(v for v in signature.values() if v != "constexpr" and v.startswith("*"))
    consts = ",".join(f"{names[p[0]]}={_short(v)}" for p, v in constexprs.items()
                      if signature[names[p[0]]] == "constexpr")
    return f"{types} | {consts} | warps={options.num_warps}"


def _short(v) -> str:
    s = str(v)
    return s.replace("triton.language.", "").replace("fp", "fp")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / SHARED / LOCAL / STACK of the (single) kernel of a cubin."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", path], check=True,
                             capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def _error_text(exc: BaseException) -> str:
    """The innermost cause of a compile error, on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and ln.strip() != "^"]
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"


def _compile_here(launch: Launch, arch: int) -> Compiled:
    import triton

    t0 = time.perf_counter()
    res = Compiled(launch.name, arch, config_key(launch), launch.kwargs.get("num_warps", 4))
    try:
        src, options, target, _, _ = _specialise(launch, arch)
        k = triton.compile(src, target=target, options=options.__dict__)
        usage = resource_usage(k.asm["cubin"])
        res.n_regs = usage["REG"]
        res.n_spills = usage["LOCAL"] // 4  # what the driver reports as n_spills
        res.shared = int(k.metadata.shared)
        res.atomics = k.asm["ttir"].count("tt.atomic_rmw")
    except Exception as exc:  # noqa: BLE001 - reported per configuration
        res.error = _error_text(exc)
    res.seconds = time.perf_counter() - t0
    return res


def compile_launch(launch: Launch, arch: int) -> Compiled:
    """Compile one launch for sm_``arch`` in a forked child (an assertion inside the
    compiler aborts the process); errors and crashes are recorded, not raised."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        send.send(asdict(_compile_here(launch, arch)))
        send.close()

    proc = ctx.Process(target=child)
    proc.start()
    send.close()
    try:
        data = recv.recv()
    except EOFError:
        data = None
    proc.join()
    if data is not None:
        return Compiled(**data)
    return Compiled(launch.name, arch, config_key(launch), launch.kwargs.get("num_warps", 4),
                    error=f"compiler crashed (exit code {proc.exitcode})",
                    seconds=time.perf_counter() - t0)


def distinct_launches(problems: Iterable, settings: Sequence[tuple[bool, bool]]
                      ) -> dict[str, tuple[Launch, list[str]]]:
    """Deduplicated launches: config identity -> (a launch, the problems that use it)."""
    out: dict[str, tuple[Launch, list[str]]] = {}
    for prob in problems:
        for det, tf32 in settings:
            dt = getattr(prob, "dtype")
            if tf32 and dt != "float32":
                continue
            for launch in launches_of(prob, det, tf32):
                key = f"{launch.name} | {config_key(launch)}"
                label = f"{prob}{' det' if det else ''}{' tf32' if tf32 else ''}"
                if key not in out:
                    out[key] = (launch, [label])
                else:
                    out[key][1].append(label)
    return out


#: (deterministic, allow_tf32): deterministic mode shares every configuration with the
#: default (no kernel uses atomics), so only TF32 varies.
SETTINGS = ((False, False), (False, True))
DOT_KERNELS = ("_coarse_kernel", "_tile_backward_kernel", "_grad_x_kernel")


def _tile_size(launch: Launch) -> tuple[int, int]:
    """(tile size, tie-break): the larger, the more registers or shared memory a config
    needs. Dot kernels: the pipelined (BLOCK_K, BLOCK_P) operand tile in bytes."""
    kw = launch.kwargs
    if "CI_PAD" in kw:
        edge = kw.get("BLOCK_K", kw.get("BLOCK_CX"))
        return edge * kw["BLOCK_P"] * launch.args[0].element_size(), kw["CI_PAD"]
    if "BLOCK_C" in kw:
        return kw["BLOCK_C"] * kw.get("BLOCK_N", kw.get("BLOCK_R", kw.get("BLOCK", 1))), kw["BLOCK_C"]
    return kw.get("BLOCK", 0), 0


def smoke_selection(distinct: dict[str, tuple[Launch, list[str]]], arch: int,
                    every_arch: bool = False) -> list[tuple[Launch, list[str]]]:
    """A short but pointed subset for the test suite: on sm_90 the largest tile of every
    (kernel, dtype, dot precision) group, skipping variants that differ
    only in a load dtype; on other archs the bf16 (tensor-core) dot kernels, or with
    ``every_arch`` the sm_90 selection on every arch."""
    groups: dict[tuple, tuple[Launch, list[str]]] = {}
    for key, (launch, probs) in distinct.items():
        kw = launch.kwargs
        dtype = str(launch.args[0].dtype).replace("torch.", "")
        full = arch == 90 or every_arch
        if not full and not (launch.name in DOT_KERNELS and dtype == "bfloat16"):
            continue  # tensor-core code generation is what differs between archs
        if full and launch.name not in DOT_KERNELS:
            if dtype in ("float16", "float64") or kw.get("IS_INDEX") is False:
                continue  # same code as fp32/bf16 but for the load dtype
        if full and launch.name == "_tile_backward_kernel" and (
                dtype in ("float16", "float64") or kw.get("PREC") == "ieee" and dtype == "float32"):
            continue  # the forward kernel covers these dot dtypes
        group = (launch.name, dtype, kw.get("PREC"), kw.get("OUTSIDE_ONLY"))
        best = groups.get(group)
        if best is None or _tile_size(launch) > _tile_size(best[0]):
            groups[group] = (launch, probs)
    return list(groups.values())


def dot_below_16_control(arch: int) -> Compiled:
    """The forward tile kernel with a dot K edge of 8, which GPUs reject: must fail here."""
    launch = launches_of(GateProblem(1, 2, 4, 16, (12, 10), (6, 5), 2, "bfloat16"))[0]
    assert launch.name == "_coarse_kernel"
    bad = Launch(launch.name, launch.fn, launch.grid, launch.args,
                 {**launch.kwargs, "BLOCK_K": 8})
    res = compile_launch(bad, arch)
    res.problems = ["control: BLOCK_K=8"]
    return res


@triton.jit
def _atomic_control(x_ptr, BLOCK: tl.constexpr):
    tl.atomic_add(x_ptr + tl.arange(0, BLOCK), 1.0)


def atomic_control(arch: int) -> Compiled:
    """A kernel with a float atomic: the TTIR count must see it (the control of the
    zero-atomics checks)."""
    x = torch.empty(16, device="meta")
    launch = Launch("_atomic_control", _atomic_control, (1,), (x,), {"BLOCK": 16, "num_warps": 1})
    res = compile_launch(launch, arch)
    res.problems = ["control: atomic_add"]
    return res


def run_matrix(matrix: str, archs: Sequence[int], progress: bool = False,
               on_result=None) -> list[Compiled]:
    """Compile the distinct configurations of the loss and gate matrices for ``archs``.

    ``matrix``: "full" (every config of the large matrix on every arch), "test" (every
    config of the smaller matrix on sm_90, its ``tl.dot`` kernels on the other archs),
    "smoke" (:func:`smoke_selection` of "test", then two controls: a dot edge under 16
    that must fail and a float atomic that must be counted) or "report" (the sm_90 smoke
    selection on every arch)."""
    full = matrix == "full"
    launches = distinct_launches([*loss_matrix(full), *gate_matrix(full)], SETTINGS)
    jobs = []
    for arch in archs:
        if matrix in ("smoke", "report"):
            chosen = smoke_selection(launches, arch, every_arch=matrix == "report")
        elif arch == 90 or matrix == "full":
            chosen = list(launches.values())
        else:  # the tensor-core kernels are where architectures differ
            chosen = [v for v in launches.values() if v[0].name in DOT_KERNELS]
        jobs += [(launch, probs, arch) for launch, probs in chosen]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="compile", unit="kernel")
    out = []
    for launch, probs, arch in jobs:
        res = compile_launch(launch, arch)
        res.problems = probs[:3] + ([f"... {len(probs) - 3} more"] if len(probs) > 3 else [])
        out.append(res)
        if on_result is not None:
            on_result(out, len(jobs))
    if matrix == "smoke":
        out.append(dot_below_16_control(archs[0]))
        out.append(atomic_control(archs[0]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", choices=("smoke", "report", "test", "full"), default="smoke")
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET (compiling needs the real JIT)",
              file=sys.stderr)
        return 2
    def save(results: list[Compiled], total: int | None = None) -> None:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"total": total or len(results), "results": [asdict(r) for r in results]},
                      f, indent=1)
        os.replace(tmp, args.json)

    def checkpoint(results: list[Compiled], total: int) -> None:
        if len(results) % 10 == 0:  # partial results survive an interrupted long run
            save(results, total)

    save(run_matrix(args.matrix, args.arch, args.progress, checkpoint))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
