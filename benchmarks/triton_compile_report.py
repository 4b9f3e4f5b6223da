"""Compile every Triton kernel configuration the CUDA launchers can choose for a matrix of
shapes and dtypes, for sm_80 / sm_90 / sm_100, with triton's bundled ptxas (no GPU
needed), and write registers, spills and shared memory to
``benchmarks/results/triton_compile.md``.

    python benchmarks/triton_compile_report.py [--matrix report|test|full|smoke] [--arch 80 90 100]

The compile runs in a child process without ``TRITON_INTERPRET`` (see
:mod:`unimri_kernels.compile_check`); results are also kept as JSON next to the md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _isa() -> str:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown ISA"
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return isa + (" + AMX" if "amx_tile" in flags else "")


def _ptxas_version() -> str:
    from triton import knobs

    out = subprocess.run([knobs.nvidia.ptxas.path, "--version"], capture_output=True,
                         text=True).stdout.strip().splitlines()
    return out[-1] if out else "unknown"


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


from unimri_kernels.compile_check import MAX_SHARED  # noqa: E402


NOTES = [
    "Findings that shaped the launchers (triton 3.7.1):",
    "- sm_100: reducing the tile's dq to a scalar inside the backward tile kernel crashed "
    "the compiler (`TritonNvidiaGPUOptimizeTMemLayoutsPass`: parent layout must have rank "
    ">= 2) for bf16/fp16 with CI_PAD >= 64; the kernel now writes dq and torch sums it.",
    "- fp64 forward tiles of 16 x 128 needed 264 KiB of shared memory (3 pipeline "
    "stages): fp64 tiles are capped at 1024 elements (backward 512).",
    "- the forward tile kernel with a `tl.dot` K edge of 8 fails to compile (sm_90), as "
    "on a GPU, while the interpreter accepts it: launchers keep every dot edge >= 16.",
    "- 8-warp tiles of 4096 elements reached 145-255 registers per thread (one program "
    "per SM); tiles are capped at 2048 elements with 4 warps (the grad_x product takes "
    "the inter channels in chunks of 64), so every fp32/half configuration fits two "
    "programs per SM (`progs/SM` = 65,536 // (regs x 32 x warps)).",
]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "unimri_kernels"], capture_output=True, text=True).stdout
        return out + (" + uncommitted kernel changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _programs_per_sm(r: dict) -> int:
    return 65536 // (r["n_regs"] * 32 * r["num_warps"])


def render(results: list[dict], matrix: str, archs: list[int], seconds: float,
           total: int) -> str:
    import torch
    import triton

    ok = [r for r in results if not r["error"] and not r["problems"][0].startswith("control")]
    control = [r for r in results if r["problems"] and r["problems"][0].startswith("control")]
    failed = [r for r in results if r["error"] and r not in control]
    lines = [
        "# Triton kernels compiled for real GPUs (no GPU used)",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"`python benchmarks/triton_compile_report.py --matrix {matrix} --arch "
        f"{' '.join(map(str, archs))}` at commit {_commit()} on CPU {_cpu()} ({_isa()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, triton {triton.__version__}, {_ptxas_version()}; "
        f"{len(results)} compilations, {seconds:.0f} s in compile calls (triton's on-disk "
        f"cache serves configurations compiled by an earlier run)"
        + (f" (PARTIAL: the run was stopped after {len(results)} of {total})."
           if total > len(results) else "."),
        "",
        "Each row is one distinct launch configuration the CUDA launchers produce for the "
        "shape/dtype matrix of `unimri_kernels/compile_check.py` (launchers run on "
        "meta tensors, launches recorded, specialised as the JIT does, compiled by ptxas). "
        "`regs` = registers per thread, `spills` = local memory / 4 (what the driver "
        "reports as n_spills), `shared` = shared memory in bytes (kernel metadata), "
        "`atomics` = `tt.atomic_rmw` ops in the TTIR. Matrix `test`: every distinct "
        "configuration on sm_90, the `tl.dot` kernels' on sm_80 and sm_100; `full`: the "
        "larger matrix on every arch; `smoke`: what `tests/test_triton_gpu_compile.py` "
        "compiles; `report`: the smoke selection (the largest tile of every kernel, dtype "
        "and dot precision) on every arch.",
        "",
        *NOTES,
        "",
        f"Compiled: {len(ok)}; failed: {len(failed)}; over the shared-memory limit: "
        f"{sum(1 for r in ok if r['shared'] > MAX_SHARED.get(r['arch'], 1 << 30))}; "
        f"configs with spills: {sum(1 for r in ok if r['n_spills'])} "
        f"(fp32/bf16/fp16: "
        f"{sum(1 for r in ok if r['n_spills'] and _dtype(r) in ('fp32', 'bf16', 'fp16'))}); "
        f"with float atomics: {sum(1 for r in ok if r['atomics'])}; fewer than 2 programs "
        f"per SM by registers: {sum(1 for r in ok if _programs_per_sm(r) < 2)}.",
        "",
        "## Summary per kernel and architecture",
        "",
        "| kernel | arch | configs | max regs | min progs/SM | max spills (fp64) "
        "| max spills (other) | max shared B | arch limit B |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        groups[(r["kernel"], r["arch"])].append(r)
    for (kernel, arch), rs in sorted(groups.items()):
        sp64 = max((r["n_spills"] for r in rs if _dtype(r) == "fp64"), default=0)
        sp = max((r["n_spills"] for r in rs if _dtype(r) != "fp64"), default=0)
        lines.append(f"| {kernel} | sm_{arch} | {len(rs)} | {max(r['n_regs'] for r in rs)} | "
                     f"{min(_programs_per_sm(r) for r in rs)} | {sp64} | {sp} | {max(r['shared'] for r in rs)} | "
                     f"{MAX_SHARED.get(arch, '?')} |")
    for c in control:
        if "BLOCK_K=8" in c["problems"][0]:
            lines += ["", "Control: the forward tile kernel with a `tl.dot` K edge of 8 "
                      f"(sm_{c['arch']}): {'fails' if c['error'] else 'COMPILES (unexpected)'}"
                      f"{': ' + c['error'] if c['error'] else ''}."]
        else:
            lines += ["", f"Control: a kernel with one `tl.atomic_add` (sm_{c['arch']}): "
                      f"{c['atomics']} atomic(s) counted in its TTIR."]
    if failed:
        lines += ["", "## Failed", "", "| kernel | arch | config | error |", "|---|---|---|---|"]
        lines += [f"| {r['kernel']} | sm_{r['arch']} | `{r['config']}` | {r['error']} |"
                  for r in failed]
    lines += ["", "## Every configuration", "",
              "| kernel | arch | config (pointer dtypes \\| constexprs \\| warps) | regs "
              "| progs/SM | spills | shared B | atomics | compile s | used by (first problems) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(ok, key=lambda r: (r["kernel"], r["arch"], r["config"])):
        cfg = r["config"].replace("|", "\\|")
        used = "; ".join(r["problems"]).replace("|", "\\|")
        lines.append(f"| {r['kernel']} | sm_{r['arch']} | `{cfg}` | {r['n_regs']} | "
                     f"{_programs_per_sm(r)} | {r['n_spills']} | {r['shared']} | {r['atomics']} | {r['seconds']:.1f} | "
                     f"{used} |")
    return "\n".join(lines) + "\n"


def _dtype(result: dict) -> str:
    return result["config"].split(",")[0].lstrip("*")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", choices=("smoke", "report", "test", "full"), default="report")
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80, 100])
    ap.add_argument("--out", type=Path, default=RESULTS / "triton_compile.md")
    ap.add_argument("--from-json", type=Path, help="render existing results instead")
    args = ap.parse_args()
    json_path = args.out.with_suffix(".json")
    start = dt.datetime.now()
    if args.from_json is None:
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "python"),
                                                        env.get("PYTHONPATH")) if p)
        subprocess.run([sys.executable, "-m", "unimri_kernels.compile_check",
                        "--matrix", args.matrix, "--arch", *map(str, args.arch),
                        "--json", str(json_path), "--progress"], env=env, check=True)
    data = json.loads((args.from_json or json_path).read_text())
    results = data["results"]
    seconds = sum(r["seconds"] for r in results)
    _write(args.out, render(results, args.matrix, args.arch, seconds, data["total"]))
    print(f"wrote {args.out} ({len(results)} compilations, "
          f"{(dt.datetime.now() - start).total_seconds():.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
