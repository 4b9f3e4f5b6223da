"""Runs the benchmark suite and writes CSV + markdown table + PNG bars per op.

    python benchmarks/run.py                 # every bench_*.py, full sizes
    python benchmarks/run.py --ops loss --quick
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


def _fixed_mmap_threshold() -> None:
    """Re-exec with a fixed glibc mmap threshold: glibc otherwise raises it after the first
    large free, big tensors stay in the heap after being freed, and the CPU peak-memory
    figures (resident-set based) of later cases read 0."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and sys.platform.startswith("linux"):
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _fixed_mmap_threshold()
    benches = discover()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(benches), help=f"comma list of {sorted(benches)}")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. one half of a split run)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.ops.split(",") if n.strip()]
    unknown = [n for n in names if n not in benches]
    if unknown:
        ap.error(f"--ops: unknown benchmark(s) {unknown}; known: {sorted(benches)}")
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    for name in names:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", benches[name])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        rec = Recorder(args.device)
        mod.run(rec, quick=args.quick, device=args.device)
        stem = f"{name}_{tag}" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
        for path in rec.write(args.out, stem):
            print("wrote", path)
        print(rec.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
