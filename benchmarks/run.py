"""Runs the benchmark suite and writes CSV + markdown table + PNG bars per op.

    python benchmarks/run.py                 # every bench_*.py, full sizes
    python benchmarks/run.py --ops summary   # the headline table (loss, gate, training steps)
    python benchmarks/run.py --ops loss --quick
    python benchmarks/run.py --ops train --compile   # include the torch.compile providers/variants

Each CSV row is written as soon as it is measured (a run stopped by a time limit keeps its
rows); the markdown table and plot follow when a benchmark ends. ``--check-args`` only
validates the arguments and imports the benchmarks (scripts/gpu_check.sh --dry-run).

Each markdown file starts with the machine (CPU model, ISA ATen uses, threads) and the
load average before and after the benchmark: on a shared machine, figures of one run are
comparable with each other (providers are interleaved), less so across runs.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import Recorder  # noqa: E402


def discover() -> dict[str, str]:
    return {os.path.basename(p)[6:-3]: p for p in sorted(glob.glob(os.path.join(HERE, "bench_*.py")))}


MEMORY_BENCHES = ("models",)


def _fixed_mmap_threshold(argv: list[str]) -> None:
    """For the benchmarks that report CPU peak memory (``MEMORY_BENCHES``), re-exec with a
    fixed glibc mmap threshold: glibc otherwise raises it after the first large free, big
    tensors stay in the heap after being freed, and the resident-set peaks of later cases
    read 0. Only for those: with the threshold fixed at 128 KiB every larger tensor is
    mapped afresh and faulted in on every step, which on these VMs doubled training-step
    times (about six times the cost of reusing memory) and distorted speed ratios."""
    ops = next((a.split("=", 1)[1] if "=" in a else None for a in argv if a.startswith("--ops")), None)
    if ops is None and "--ops" in argv and argv.index("--ops") + 1 < len(argv):
        ops = argv[argv.index("--ops") + 1]
    wanted = discover() if ops is None else [o.strip() for o in ops.split(",")]
    if not any(name in wanted for name in MEMORY_BENCHES):
        return
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and sys.platform.startswith("linux"):
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *argv])


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _malloc_note() -> str:
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if threshold is None:
        return " glibc malloc defaults."
    return (f" glibc mmap threshold fixed at {threshold} bytes for the peak-memory rows: tensors "
            f"above it are faulted in afresh on every step, so step times here run slower than in training.")


def _prepend_machine(md_path: str, load_before: float, load_after: float) -> None:
    """Start the markdown table with the machine and how busy it was during the run."""
    from unimri._atomic import atomic_write_text

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    capability = torch.backends.cpu.get_cpu_capability()
    head = (f"Machine: {cores} cores, PyTorch threads {torch.get_num_threads()}, ATen CPU capability "
            f"{capability}; 1-min load average {load_before:.1f} before and {load_after:.1f} after "
            f"this benchmark{' (shared with other jobs: compare rows within this file)' if max(load_before, load_after) > cores else ''}."
            f"{_malloc_note()}\n\n")
    with open(md_path) as fh:
        text = fh.read()
    atomic_write_text(md_path, head + text)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _fixed_mmap_threshold(sys.argv[1:])
    benches = discover()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(benches), help=f"comma list of {sorted(benches)}")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. one half of a split run)")
    ap.add_argument("--compile", action="store_true",
                    help="also measure torch.compile providers/variants (inductor compiles for minutes)")
    ap.add_argument("--check-args", action="store_true",
                    help="validate the arguments and import the benchmarks, measure nothing")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.ops.split(",") if n.strip()]
    unknown = [n for n in names if n not in benches]
    if unknown:
        ap.error(f"--ops: unknown benchmark(s) {unknown}; known: {sorted(benches)}")
    if args.compile:
        os.environ["UNIMRI_BENCH_COMPILE"] = "1"
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    for name in names:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", benches[name])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        stem = f"{name}_{tag}" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
        if args.check_args:
            print(f"check-args: bench_{name} imports; would write {os.path.join(args.out, stem)}.csv "
                  f"on {args.device}, compile {'on' if args.compile else 'off'}")
            continue
        rec = Recorder(args.device)
        rec.stream_to(os.path.join(args.out, f"{stem}.csv"))
        before = _load()
        mod.run(rec, quick=args.quick, device=args.device)
        for path in rec.write(args.out, stem):
            print("wrote", path)
        _prepend_machine(os.path.join(args.out, f"{stem}.md"), before, _load())
        print(rec.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
