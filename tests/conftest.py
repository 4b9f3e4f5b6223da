"""Test configuration. TRITON_INTERPRET must be set before any Triton kernel is imported,
so that without a GPU the Triton kernels run in the interpreter on CPU tensors."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA = torch.cuda.is_available()
if CUDA:
    # CUDA results are compared with float64 references: no TF32 in cuDNN convolutions (on by
    # default) or cuBLAS matmuls; a test of the TF32 path turns it on itself
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
_NO_CUDA = "needs a CUDA device"
requires_cuda = pytest.mark.skipif(not CUDA, reason=_NO_CUDA)


# numpy >= 2.4 no longer converts a one-element array to a Python int; triton < 3.7's interpreter
# does that for every runtime scalar used as an index or a loop bound (`range(0, K, BLOCK)`), so
# such kernels fail there ("only 0-dimensional arrays can be converted to Python scalars").
# Kernels without one run, so only the tests that hit the error skip, and only on that pairing.
_NUMPY_SCALAR_ERROR = "only 0-dimensional arrays can be converted to Python scalars"


def _interpreter_numpy_clash() -> str | None:
    """The skip reason when the installed triton's interpreter cannot run with the installed
    numpy, else None."""
    from importlib import metadata

    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        triton_v, numpy_v = metadata.version("triton"), metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return None

    def release(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("+")[0].split(".")[:2] if p.isdigit())

    if release(triton_v) < (3, 7) and release(numpy_v) >= (2, 4):
        return (f"triton {triton_v}'s interpreter cannot run this kernel with numpy {numpy_v} "
                "(needs numpy < 2.4 or triton >= 3.7); the kernel itself runs on CUDA")
    return None


INTERPRETER_CLASH = _interpreter_numpy_clash()


def _is_numpy_scalar_error(exc: BaseException) -> bool:
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if _NUMPY_SCALAR_ERROR in str(e):
            return True
        stack.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except Exception as exc:
        if INTERPRETER_CLASH and _is_numpy_scalar_error(exc):
            pytest.skip(INTERPRETER_CLASH)
        raise


def pytest_collection_modifyitems(config, items):
    """One rule for CUDA tests, whichever way a file marks them: a test carrying
    ``requires_cuda`` also gets the ``cuda`` marker (``pytest -m cuda`` selects exactly the
    CUDA tests; scripts/gpu_check.sh relies on it), and a test marked ``cuda`` skips without
    a CUDA device."""
    for item in items:
        skip_without_gpu = any(m.kwargs.get("reason") == _NO_CUDA for m in item.iter_markers("skipif"))
        marked = item.get_closest_marker("cuda") is not None
        if skip_without_gpu and not marked:
            item.add_marker(pytest.mark.cuda)
        if marked and not skip_without_gpu:
            item.add_marker(requires_cuda)


@pytest.fixture
def one_thread():
    """One intra-op thread: deterministic reductions, and no oversubscription when tiny
    convolutions run under ``-n 2`` on shared CPUs (``pytestmark = usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def variant(request, monkeypatch):
    """The C++ backend on the CPU build named by the indirect parameter ("baseline", "avx2",
    "avx512"; see ``unimri_kernels.cpu_variants()``)."""
    from unimri_kernels.dispatch import cpu_variant, use_backend

    monkeypatch.delenv("UNIMRI_CPU_BASELINE", raising=False)
    monkeypatch.setenv("UNIMRI_CPU_VARIANT", request.param)
    assert cpu_variant() == request.param
    with use_backend("cpp"):
        yield request.param


@pytest.fixture
def tile_products(request, monkeypatch):
    """UNIMRI_TILE_GEMM for the CPU kernels' tile products, named by the indirect parameter:
    "auto" (the default rule: bf16/fp16 tiles multiplied in their own type where the CPU has AMX
    for it and the product's inner dimensions are >= 32) or "half" (in their own type wherever
    the BLAS has the mixed-precision GEMM: every kernel pass on any shape)."""
    monkeypatch.setenv("UNIMRI_TILE_GEMM", request.param)
    yield request.param


def require_half_products(dtype: torch.dtype) -> None:
    """Skips where the BLAS has no mixed-precision GEMM for ``dtype`` (then the kernels only
    ever multiply float32 tiles, which the other tests cover)."""
    import unimri_kernels._C  # noqa: F401  (registers the op)

    before = os.environ.get("UNIMRI_TILE_GEMM")
    os.environ["UNIMRI_TILE_GEMM"] = "half"
    try:
        present = torch.ops.unimri.tile_gemm_half_products(dtype) == "always"
    finally:
        if before is None:
            del os.environ["UNIMRI_TILE_GEMM"]
        else:
            os.environ["UNIMRI_TILE_GEMM"] = before
    if not present:
        pytest.skip(f"this BLAS has no mixed-precision GEMM for {dtype}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    # each test compiles from a clean slate: compilations left by earlier tests in the same
    # worker count towards dynamo's recompile limit, which fullgraph=True turns into a failure
    torch._dynamo.reset()
    yield


def _missing(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a module blocked in sys.modules
        return True


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip one test (not the file) when an optional package is missing."""
    absent = [m for m in modules if _missing(m)]
    return pytest.mark.skipif(bool(absent), reason=f"needs {', '.join(absent)} (optional package)")


class LazyModule:
    """An optional module imported on first use; a test touching it without the package skips."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # pytest's collection probes attributes: no import then
            raise AttributeError(attr)
        return getattr(pytest.importorskip(self._name), attr)
