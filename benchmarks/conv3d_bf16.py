"""PyTorch's own CPU bf16 Conv3d weight gradient against float64, with no unimri op anywhere.

A ``torch.nn.Conv3d(32, 64, 3, padding=1)`` runs forward and backward under CPU bf16 autocast
on random inputs at several grids (D, H, W), and so does unimri's
:class:`unimri.nn.layers.Conv3d` with the same weights. Each weight gradient is compared with
the exact one, computed in float64 from the same bf16-rounded input and output gradient.
Writes a markdown file with the machine, torch, commit, command, load and date.

    python benchmarks/conv3d_bf16.py --out benchmarks/results/conv3d_bf16.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

from unimri.nn.layers import Conv3d
from unimri.runtime.provenance import command_line, git_commit, machine

GRIDS = ((2, 2, 2), (2, 4, 4), (2, 8, 8), (1, 4, 4), (3, 4, 4), (4, 2, 2), (4, 4, 2), (4, 4, 4), (8, 8, 8))
WRONG = 1e-2  # a bf16 weight gradient this far off in norm (or non-finite) counts as wrong


def relative_errors(module_cls: type, grid: tuple[int, int, int], calls: int, seed: int = 0) -> list[float]:
    """Per call: ||bf16 weight gradient - exact|| / ||exact|| (inf where it is not finite)."""
    torch.manual_seed(seed)
    errors = []
    for _ in range(calls):
        conv = module_cls(32, 64, 3, padding=1)
        x = torch.randn(2, 32, *grid)
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
    rows = ["| grid D×H×W | module | calls | non-finite | finite, rel. error > 1e-2 | largest finite rel. error "
            "| median rel. error |", "|---|---|---|---|---|---|---|"]
    for grid in GRIDS:
        for label, module_cls in (("torch.nn.Conv3d", torch.nn.Conv3d), ("unimri Conv3d", Conv3d)):
            errors = relative_errors(module_cls, grid, calls)
            finite = sorted(e for e in errors if e != float("inf"))
            largest = f"{max(finite):.3g}" if finite else "—"
            median = f"{finite[len(finite) // 2]:.3g}" if finite else "—"
            rows.append(f"| {'×'.join(map(str, grid))} | {label} | {calls} | {calls - len(finite)} | "
                        f"{sum(e > WRONG for e in finite)} | {largest} | {median} |")
    m = machine()
    return "\n".join([
        "# PyTorch's CPU bf16 Conv3d weight gradient against float64",
        "",
        f"- command: `{command_line()}`; commit {git_commit()}",
        f"- machine: CPU {m.get('cpu')}, ISA {m.get('isa')}, {m.get('cpus')} CPUs; torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; 1-min load before: {load:.2f}",
        "- `Conv3d(32, 64, 3, padding=1)`, input (2, 32, D, H, W), bf16 autocast, random output"
        " gradient; exact = the weight gradient in float64 from the same bf16 operands;"
        " unimri's Conv3d has nn.Conv3d's weights and runs in float32 where D = 2",
        "",
        *rows,
        "",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--calls", type=int, default=40, help="calls per grid and module")
    args = ap.parse_args(argv)
    text = report(args.calls)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
