"""Which implementation runs a ``unimri::*`` op for a given tensor.

Rules (DESIGN.md, "Dispatch"), read at call time so tests and users can switch:

* CUDA tensors -> Triton kernel (reference if ``UNIMRI_BACKEND=reference``).
* CPU tensors -> C++ kernel from ``unimri_kernels._C``.
* ``UNIMRI_BACKEND=triton`` with ``TRITON_INTERPRET=1`` -> Triton kernel on the CPU.
* ``UNIMRI_BACKEND=reference`` -> pure PyTorch reference.

If ``_C`` failed to build, CPU tensors use the reference and one warning says so.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import warnings
from typing import Iterator

import torch

BACKENDS = ("auto", "cpp", "triton", "reference")
_override: str | None = None
_cpp_module = None
_cpp_checked = False
_triton_checked: bool | None = None


_BUILT_MARKER = re.compile(rb"unimri-built-against-torch=(\d+\.\d+\.\d+);")
_REBUILD = "Rebuild it against the running torch: `pip install --no-build-isolation -e .`"


def _release(version: str) -> str:
    """"2.13.0+cpu" -> "2.13.0" (the part the C++ ABI follows)."""
    return version.split("+")[0]


def built_torch_version(path: str) -> str | None:
    """The torch version ``_C`` at ``path`` was compiled against (read from the file, not loaded)."""
    try:
        with open(path, "rb") as fh:
            found = _BUILT_MARKER.search(fh.read())
    except OSError:
        return None
    return found.group(1).decode() if found else None


def _warn_reference(reason: str) -> None:
    warnings.warn(f"unimri: {reason}; CPU tensors use the slower PyTorch reference. {_REBUILD}",
                  RuntimeWarning, stacklevel=4)


def _load_cpp():
    """Import ``unimri_kernels._C`` once; say once, clearly, why it is not used if it is not."""
    global _cpp_module, _cpp_checked
    if _cpp_checked:
        return _cpp_module
    _cpp_checked = True
    try:
        spec = importlib.util.find_spec("unimri_kernels._C")
    except ImportError as exc:
        _warn_reference(f"the C++ kernels (unimri_kernels._C) cannot be imported ({exc})")
        return None
    if spec is None or spec.origin is None:
        _warn_reference("the C++ kernels (unimri_kernels._C) are not built")
        return None
    built, running = built_torch_version(spec.origin), _release(torch.__version__)
    if built is not None and built != running:
        # loading a library built against another torch can fail or, worse, misbehave
        _warn_reference(f"the C++ kernels (unimri_kernels._C) were built against torch {built} but torch "
                        f"{torch.__version__} is running, so they are not loaded")
        return None
    try:
        _cpp_module = importlib.import_module("unimri_kernels._C")
    except ImportError as exc:  # pragma: no cover - depends on the build
        _warn_reference(f"the C++ kernels (unimri_kernels._C, built against torch {built or 'unknown'}, "
                        f"running {torch.__version__}) failed to load ({exc})")
    return _cpp_module


def has_cpp() -> bool:
    return _load_cpp() is not None


def has_triton() -> bool:
    global _triton_checked
    if _triton_checked is None:
        try:
            importlib.import_module("triton")
            _triton_checked = True
        except ImportError:
            _triton_checked = False
    return _triton_checked


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend() -> str:
    name = _override or os.environ.get("UNIMRI_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"UNIMRI_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def backend_for(tensor: torch.Tensor) -> str:
    """Name of the implementation ("cpp", "triton" or "reference") for ``tensor``'s device."""
    name = requested_backend()
    if name == "reference":
        return "reference"
    if tensor.device.type == "cuda":
        if name == "cpp":
            raise ValueError("UNIMRI_BACKEND=cpp cannot run CUDA tensors; use auto or triton")
        return "triton" if has_triton() else "reference"
    if tensor.device.type != "cpu":
        raise ValueError(f"unimri ops run on cpu or cuda tensors, got device {tensor.device}")
    if name == "triton":
        if not has_triton():
            raise RuntimeError("UNIMRI_BACKEND=triton but triton is not installed")
        if not triton_interpreted():
            raise RuntimeError(
                "UNIMRI_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 set before "
                "the kernels are imported"
            )
        return "triton"
    return "cpp" if has_cpp() else "reference"


def cpu_variant() -> str:
    """Build of the C++ CPU kernels that runs now: "avx512", "avx2" or "baseline" ("reference"
    when ``_C`` is missing). ``UNIMRI_CPU_VARIANT`` (auto|baseline|avx2|avx512) or
    ``UNIMRI_CPU_BASELINE=1`` force one; they are read at every kernel call."""
    if not has_cpp():
        return "reference"
    return str(torch.ops.unimri.cpu_variant())


def cpu_variants() -> list[str]:
    """Every C++ kernel build this machine can run, narrowest first (empty without ``_C``)."""
    if not has_cpp():
        return []
    return list(torch.ops.unimri.cpu_variants())


def cpu_pool_stats() -> dict[str, int]:
    """The C++ kernels' pool of recycled output blocks (csrc/output_pool.h): ``held_bytes`` and
    ``held_blocks`` free now, ``hits`` and ``misses`` since start or the last release (all 0
    without ``_C``). ``UNIMRI_CPU_POOL_MB`` (read once; default 2048 or an eighth of RAM,
    0 disables) caps what it holds; a forked child starts with an empty pool."""
    if not has_cpp():
        return {"held_bytes": 0, "held_blocks": 0, "hits": 0, "misses": 0}
    held, blocks, hits, misses = torch.ops.unimri.cpu_pool_stats()
    return {"held_bytes": held, "held_blocks": blocks, "hits": hits, "misses": misses}


def pooled_empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device; on
    CPU, in eager mode and with ``_C`` built, one of at least 1 MiB comes from the pool of
    recycled blocks (fresh pages cost about six times reused ones on the VMs measured, and
    glibc maps every block above 32 MB afresh)."""
    if like.device.type != "cpu" or torch.compiler.is_compiling() or not has_cpp():
        return like.new_empty(shape)
    return torch.ops.unimri.cpu_pool_empty(list(shape), like.dtype)


def release_cpu_pool() -> None:
    """Give the pool's free blocks back to the system (e.g. between training and inference)."""
    if has_cpp():
        torch.ops.unimri.cpu_pool_release()


def eager_cpp_route(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` may call the C++ kernels through a small autograd Function
    instead of its custom op (eager mode, a CPU tensor, the cpp backend): the custom op costs
    some 0.1-0.5 ms per forward + backward in Python."""
    return not torch.compiler.is_compiling() and x.device.type == "cpu" and backend_for(x) == "cpp"


def cpp_ops():
    """The ``torch.ops.unimri`` namespace after loading ``_C`` (raises if it is missing)."""
    if _load_cpp() is None:
        raise RuntimeError("unimri_kernels._C is not built")
    return torch.ops.unimri


def available_backends(device: str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this process (used by tests and benchmarks)."""
    out = ["reference"]
    if device == "cpu":
        if has_cpp():
            out.append("cpp")
        if has_triton() and triton_interpreted():
            out.append("triton")
    elif device == "cuda" and has_triton() and torch.cuda.is_available():
        out.append("triton")
    return out


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (takes precedence over UNIMRI_BACKEND)."""
    global _override
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    old, _override = _override, name
    try:
        yield
    finally:
        _override = old
