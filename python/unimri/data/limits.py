"""Size limits checked against a file's declared shape before any voxel data is read.

A scan's header states its grid; a 2 KB compressed file can claim billions of voxels.
Every reader calls :func:`check_declared_shape` with the header's shape and item size
before it allocates or decompresses the voxel data, so an oversized or hostile file is
refused with a message naming the file and the declared shape.

The limit is, in order: the ``limit`` argument; :func:`set_max_voxels` (the CLI's
``--max-voxels``); the ``UNIMRI_MAX_VOXELS`` environment variable; the default 2**31
voxels. Independently of the voxel count, a file whose decoded size would exceed half of
the machine's available memory is refused too.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

DEFAULT_MAX_VOXELS = 2**31
ENV_VAR = "UNIMRI_MAX_VOXELS"
_override: int | None = None


def _parse_limit(value, where: str) -> int:
    try:
        limit = int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a positive whole number of voxels, got {value!r}") from None
    if limit <= 0:
        raise ValueError(f"{where}: expected a positive whole number of voxels, got {value!r}")
    return limit


def max_voxels() -> int:
    """The voxel limit in force (see the module docstring for the order)."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    if env:
        return _parse_limit(env, ENV_VAR)
    return DEFAULT_MAX_VOXELS


def set_max_voxels(limit: int | None) -> None:
    """Set the process-wide voxel limit (``None`` goes back to the environment/default)."""
    global _override
    _override = None if limit is None else _parse_limit(limit, "--max-voxels")


@contextmanager
def voxel_limit(limit: int | None) -> Iterator[None]:
    """Temporarily set the voxel limit (tests, library callers)."""
    global _override
    before = _override
    set_max_voxels(limit)
    try:
        yield
    finally:
        _override = before


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_declared_shape(path: str, shape: Sequence[int], itemsize: int = 1,
                         limit: int | None = None) -> int:
    """Refuse a file whose header declares too many voxels; returns the voxel count.

    Args:
        path: the file, named in the error.
        shape: the grid the header declares (every axis, components included).
        itemsize: bytes per stored element, for the memory check.
        limit: voxel limit; default :func:`max_voxels`.

    Raises:
        ValueError naming the file and the declared shape when an axis is negative, the
        count exceeds the limit, or the decoded data would exceed half the available memory.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ValueError(f"image file {path!r}: header declares a negative size {tuple(dims)}")
    count = math.prod(dims) if dims else 0
    cap = max_voxels() if limit is None else _parse_limit(limit, "limit")
    if count > cap:
        raise ValueError(f"image file {path!r}: header declares shape {tuple(dims)} = {count:,} voxels, "
                         f"more than the limit of {cap:,} (raise it with --max-voxels or "
                         f"{ENV_VAR} if the file is trusted)")
    free = available_memory_bytes()
    need = count * max(int(itemsize), 1)
    if free is not None and need > free // 2:
        raise ValueError(f"image file {path!r}: header declares shape {tuple(dims)} "
                         f"({need / 2**30:.1f} GiB decoded), more than half of the available memory "
                         f"({free / 2**30:.1f} GiB)")
    return count
