"""PyTorch's own CPU bf16 Conv3d weight gradient against float64, with no unimri op anywhere.

A plain ``torch.nn.Conv3d(32, 64, 3, padding=1)`` runs forward and backward under CPU bf16
autocast on random inputs at two grids: 2x2x2 (the deepest level of the 3D backbones) and
8x8x8. Each weight gradient is compared with the exact one, computed in float64 from the same
bf16-rounded input and output gradient. Writes a markdown file with the machine, torch, commit,
command, load and date.

    python benchmarks/conv3d_bf16.py --out benchmarks/results/conv3d_bf16.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

from unimri.runtime.provenance import command_line, git_commit, machine

GRIDS = (2, 8)


def relative_errors(grid: int, calls: int, seed: int = 0) -> list[float]:
    """Per call: ||bf16 kernel's weight gradient - exact|| / ||exact|| (inf where it is not finite)."""
    torch.manual_seed(seed)
    errors = []
    for _ in range(calls):
        conv = torch.nn.Conv3d(32, 64, 3, padding=1)
        x = torch.randn(2, 32, grid, grid, grid)
        with torch.autocast("cpu", torch.bfloat16):
            y = conv(x)
        grad_out = torch.randn(y.shape).to(torch.bfloat16)
        y.backward(grad_out)
        exact = torch.nn.grad.conv3d_weight(x.to(torch.bfloat16).double(), conv.weight.shape,
                                            grad_out.double(), padding=1)
        got = conv.weight.grad.double()
        errors.append(float("inf") if not torch.isfinite(got).all()
                      else ((got - exact).norm() / exact.norm()).item())
    return errors


def report(calls: int) -> str:
    load = os.getloadavg()[0]
    rows = ["| grid | calls | non-finite | finite calls with rel. error > 1e-2 | largest finite rel. error | median rel. error |",
            "|---|---|---|---|---|---|"]
    for grid in GRIDS:
        errors = relative_errors(grid, calls)
        finite = sorted(e for e in errors if e != float("inf"))
        rows.append(f"| {grid}x{grid}x{grid} | {calls} | {calls - len(finite)} | "
                    f"{sum(e > 1e-2 for e in finite)} | {max(finite):.3g} | {finite[len(finite) // 2]:.3g} |")
    m = machine()
    return "\n".join([
        "# PyTorch's CPU bf16 Conv3d weight gradient against float64",
        "",
        f"- command: `{command_line()}`; commit {git_commit()}",
        f"- machine: CPU {m.get('cpu')}, ISA {m.get('isa')}, {m.get('cpus')} CPUs; torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; 1-min load before: {load:.2f}",
        "- `torch.nn.Conv3d(32, 64, 3, padding=1)`, input (2, 32, g, g, g), bf16 autocast, random"
        " output gradient; exact = the weight gradient in float64 from the same bf16 operands",
        "",
        *rows,
        "",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--calls", type=int, default=100, help="calls per grid")
    args = ap.parse_args(argv)
    text = report(args.calls)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
