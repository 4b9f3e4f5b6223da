"""Byte model of recorded Triton launches (see :func:`compile_check.capture_launches`).

Model: every tensor argument of a launch moves once between DRAM and the chip — read,
written, or both (read-modify-write), as :data:`ACCESS` lists per kernel — at its full
size. Re-reads that hit L2 are not counted, and neither is the second-pass ``torch.sum``
of partials. It is a model for comparing routes against their minimum traffic, not a
measurement; the first GPU run checks it against achieved bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Pointer arguments each kernel writes ("w") or reads and writes ("rw"); the rest are read.
ACCESS = {
    "_ufl_stats_kernel": {"partial_ptr": "w", "lab_ptr": "w"},
    "_ufl_finish_kernel": {"loss_ptr": "w", "coef_ptr": "w", "bad_ptr": "w"},
    "_ufl_grad_kernel": {"grad_ptr": "w"},
    "_coarse_kernel": {"a_ptr": "w"},
    "_scale_kernel": {"y_ptr": "w", "alpha_ptr": "w"},
    "_dalpha_kernel": {"out_ptr": "w"},
    "_adjoint_kernel": {"u_ptr": "w"},
    "_tile_backward_kernel": {"a_ptr": "w", "dpre_ptr": "w", "dg_ptr": "w", "dtw_ptr": "w",
                              "dpw_ptr": "w", "dpb_ptr": "w", "dsw_ptr": "w", "dq_ptr": "w"},
    "_grad_x_kernel": {"gx_ptr": "w"},
}


@dataclass
class Traffic:
    """Bytes one launch reads and writes, per argument name."""

    kernel: str
    read: dict
    written: dict

    @property
    def total(self) -> int:
        return sum(self.read.values()) + sum(self.written.values())


def launch_traffic(launch) -> Traffic:
    """The :class:`Traffic` of one recorded launch. A tensor passed twice under different
    names (e.g. a placeholder pointer) is counted once, under its first name."""
    access = ACCESS.get(launch.name, {})
    read, written, seen = {}, {}, set()
    for name, arg in zip(launch.fn.arg_names, launch.args):
        if not isinstance(arg, torch.Tensor) or id(arg) in seen:
            continue
        seen.add(id(arg))
        nbytes = arg.numel() * arg.element_size()
        mode = access.get(name, "r")
        if "r" in mode:
            read[name] = nbytes
        if "w" in mode:
            written[name] = nbytes
    return Traffic(launch.name, read, written)


def route_bytes(launches) -> int:
    """Total modelled bytes of a list of launches."""
    return sum(launch_traffic(ln).total for ln in launches)
