"""The C++ kernels really load. Without ``_C`` (not built, built against another torch, or
failing to load) every CPU op falls back to the PyTorch reference with one warning, and the
tests of the C++ backend skip: this file fails instead, so CI cannot pass on the reference
alone. A deliberate pure-Python install (``UNIMRI_NO_EXT=1``, see setup.py) skips it."""
from __future__ import annotations

import glob
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import unimri_kernels
from unimri_kernels import dispatch

pytestmark = pytest.mark.skipif(os.environ.get("UNIMRI_NO_EXT") == "1",
                                reason="UNIMRI_NO_EXT=1: installed without the C++ kernels")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extension_path() -> str:
    spec = importlib.util.find_spec("unimri_kernels._C")
    assert spec is not None and spec.origin, "unimri_kernels._C is not built: pip install --no-build-isolation -e ."
    return spec.origin


def test_extension_is_built_against_the_running_torch():
    path = _extension_path()
    assert os.path.dirname(path) == os.path.dirname(unimri_kernels.__file__), \
        f"_C at {path} is not beside the imported unimri_kernels ({unimri_kernels.__file__})"
    built = dispatch.built_torch_version(path)
    assert built == torch.__version__.split("+")[0], f"_C built against torch {built}, running {torch.__version__}"


def test_extension_is_newer_than_its_sources():
    """A _C older than a C++ source is a stale build (rebuild with setup.py build_ext --inplace)."""
    sources = glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "*.h"))
    if not sources:
        pytest.skip("no csrc/ beside the tests (installed package)")
    newest = max(sources, key=os.path.getmtime)
    assert os.path.getmtime(_extension_path()) >= os.path.getmtime(newest), f"_C is older than {newest}"


def test_cpu_tensors_run_the_cpp_kernels(monkeypatch):
    monkeypatch.delenv("UNIMRI_BACKEND", raising=False)
    assert dispatch.has_cpp()
    assert dispatch.backend_for(torch.empty(1)) == "cpp"
    assert "cpp" in unimri_kernels.available_backends("cpu")
    assert dispatch.cpu_variant() in dispatch.cpu_variants()


def test_a_cpp_kernel_computes():
    """max_pool2x through the C++ backend equals PyTorch's max pooling bit for bit."""
    from unimri_kernels.ops.max_pool import max_pool2x

    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(0))
    with unimri_kernels.use_backend("cpp"):
        got = max_pool2x(x)
    torch.testing.assert_close(got, F.max_pool2d(x, 2, 2), rtol=0, atol=0)
