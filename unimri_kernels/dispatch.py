"""Which implementation runs a ``unimri`` op: the one routing rule, and every environment
switch the kernels read.

:func:`route` is the only routing decision; every op's wrapper asks it once per call:

* ``"compiled"``: under ``torch.compile`` (tracing), and for meta tensors (shapes only, e.g.
  the trainer's size probe) -> the ``torch.library`` custom op, whose fake implementation
  traces and whose body picks the kernel (:func:`backend_for`) when the graph runs. ``torch.library.opcheck`` and direct ``torch.ops.unimri.*`` calls run the same
  custom op.
* ``"direct"``: eager mode, CPU tensors, C++ backend -> the C++ kernels of
  ``unimri_kernels._C`` through a small ``torch.autograd.Function`` (the ``Direct*`` classes of
  :mod:`unimri_kernels.ops`), which skips the custom op's per-call overhead.
* ``"triton"``: CUDA tensors (or CPU tensors with ``UNIMRI_BACKEND=triton`` and
  ``TRITON_INTERPRET=1``) -> the custom op, whose body launches the Triton kernel.
* ``"reference"``: ``UNIMRI_BACKEND=reference``, or CPU tensors without a built ``_C`` -> the
  custom op, whose body runs the PyTorch reference (:mod:`unimri_kernels.reference`).

Inside a custom op's body :func:`backend_for` names the kernel for the tensor's device
("cpp", "triton" or "reference"); :func:`route` is that choice plus whether the op is being
traced. If ``_C`` failed to build, CPU tensors use the reference and one warning says so.

Environment switches (all read at call time unless said otherwise, so tests and users can
change them between calls):

* ``UNIMRI_BACKEND`` = ``auto`` (default) | ``cpp`` | ``triton`` | ``reference``: the backend
  (:func:`use_backend` overrides it inside a ``with`` block).
* ``TRITON_INTERPRET=1``: Triton's CPU interpreter (Triton's own switch; it must be set before
  the kernels are imported); needed for ``UNIMRI_BACKEND=triton`` on CPU tensors.
* ``UNIMRI_CPU_VARIANT`` = ``auto`` (default: the widest the CPU runs) | ``baseline`` | ``avx2``
  | ``avx512``: which build of the C++ kernels runs (csrc/cpu_variant.h); asking for one the
  machine cannot run raises a ValueError naming the variable. ``UNIMRI_CPU_BASELINE=1`` is a
  synonym of ``UNIMRI_CPU_VARIANT=baseline``. :func:`cpu_variant` names the one in use.
* ``UNIMRI_TILE_GEMM`` = unset (default) | ``aten`` | ``fp32`` | ``half``: the C++ kernels'
  small tile products (csrc/tile_gemm.h): by default the BLAS directly, bf16/fp16 tiles in their
  type only where the CPU has AMX; ``aten`` multiplies through ``at::mm`` (and bf16/fp16 tiles
  as float32), ``fp32`` converts bf16/fp16 tiles to float32, ``half`` always multiplies them in
  their type.
* ``UNIMRI_CPU_POOL_MB`` (read once, when the pool is first used): the most megabytes of free
  output blocks the C++ kernels keep for reuse (csrc/output_pool.h; default 2048 or an eighth
  of RAM, 0 disables); :func:`cpu_pool_stats`.
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


ROUTES = ("compiled", "direct", "triton", "reference")


def route(x: torch.Tensor) -> str:
    """The implementation that runs an op on ``x`` now, one of :data:`ROUTES` (see the module
    docstring): "compiled" while ``torch.compile`` traces (or for meta tensors), "direct" for
    the C++ kernels through an autograd Function in eager mode on CPU, else the custom op with
    the Triton kernel or the reference."""
    if torch.compiler.is_compiling() or x.device.type == "meta":
        return "compiled"
    backend = backend_for(x)
    return "direct" if backend == "cpp" else backend


def fused_route(x: torch.Tensor) -> bool:
    """Whether a module with a plain-PyTorch fallback (batch norm + ReLU, max pooling, 1x1
    convolution) runs the fused op on ``x``: traced (the custom op picks its kernel when the
    graph runs) or on the direct C++ route; the Triton and reference backends have no kernel
    for these ops, so the modules' own forward runs."""
    return route(x) in ("compiled", "direct")


def run_op(x: torch.Tensor, direct: type[torch.autograd.Function], op, *args):
    """``direct.apply(*args)`` on the "direct" route, else the custom op ``op(*args)``: the one
    call site of :func:`route` for the ops that have both."""
    if route(x) == "direct":
        return direct.apply(*args)
    return op(*args)


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
