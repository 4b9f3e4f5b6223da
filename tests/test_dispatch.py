"""Dispatch rules: backend selection, the missing-extension fallback and bad settings."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from unimri_kernels import dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_default_is_cpp_when_built_and_env_overrides(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("UNIMRI_BACKEND", raising=False)
    assert dispatch.backend_for(x) == ("cpp" if dispatch.has_cpp() else "reference")
    monkeypatch.setenv("UNIMRI_BACKEND", "reference")
    assert dispatch.backend_for(x) == "reference"
    monkeypatch.setenv("UNIMRI_BACKEND", "triton")
    assert dispatch.backend_for(x) == "triton"  # conftest set TRITON_INTERPRET=1
    with dispatch.use_backend("reference"):
        assert dispatch.backend_for(x) == "reference"
    monkeypatch.setenv("UNIMRI_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="UNIMRI_BACKEND must be one of"):
        dispatch.backend_for(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        with dispatch.use_backend("fast"):
            pass


def test_route_names_the_implementation(monkeypatch):
    """route(): "direct" for CPU tensors on the C++ backend in eager mode, the backend's name
    otherwise, "compiled" while torch.compile traces; fused_route() only for the first two."""
    x = torch.zeros(2)
    monkeypatch.delenv("UNIMRI_BACKEND", raising=False)
    expected = "direct" if dispatch.has_cpp() else "reference"
    assert dispatch.route(x) == expected
    assert dispatch.fused_route(x) == (expected == "direct")
    with dispatch.use_backend("reference"):
        assert dispatch.route(x) == "reference"
        assert not dispatch.fused_route(x)
    monkeypatch.setenv("UNIMRI_BACKEND", "triton")
    assert dispatch.route(x) == "triton"  # conftest set TRITON_INTERPRET=1
    monkeypatch.delenv("UNIMRI_BACKEND")
    seen = []

    def traced(t):
        seen.append((dispatch.route(t), dispatch.fused_route(t)))
        return t + 1

    torch.compile(traced, backend="eager", fullgraph=True)(x)
    assert seen == [("compiled", True)]
    assert dispatch.route(torch.zeros(2, device="meta")) == "compiled"  # the custom ops' fakes


def test_run_op_takes_the_direct_function_only_on_the_direct_route():
    class Direct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t + 1

        @staticmethod
        def backward(ctx, grad):
            return grad

    x = torch.zeros(2)
    got = dispatch.run_op(x, Direct, lambda t: t + 2, x)
    assert torch.equal(got, x + (1 if dispatch.route(x) == "direct" else 2))
    with dispatch.use_backend("reference"):
        assert torch.equal(dispatch.run_op(x, Direct, lambda t: t + 2, x), x + 2)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("UNIMRI_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.backend_for(torch.zeros(1))


def test_missing_extension_falls_back_to_reference_with_one_warning():
    """Block the import of unimri_kernels._C: the losses still work and warn once."""
    script = textwrap.dedent("""
        import sys, warnings, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "unimri_kernels._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from unimri.losses import UnifiedFocalLoss
            from unimri_kernels.dispatch import backend_for
            x = torch.randn(2, 3, 8, 8, requires_grad=True)
            t = torch.randint(0, 3, (2, 8, 8))
            for _ in range(3):
                UnifiedFocalLoss()(x, t).backward()
        msgs = [str(w.message) for w in caught if "C++ kernels" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "reference" in msgs[0]
        assert backend_for(x) == "reference"
        assert torch.isfinite(x.grad).all()
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), ROOT]))
    env.pop("UNIMRI_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_extension_built_against_another_torch_is_reported_and_skipped(monkeypatch, tmp_path):
    """An _C compiled against torch 1.0.0 is not loaded; one warning names both versions."""
    fake = tmp_path / "_C.so"
    fake.write_bytes(b"\x7fELF...unimri-built-against-torch=1.0.0;...")
    monkeypatch.setattr(dispatch, "_cpp_checked", False)
    monkeypatch.setattr(dispatch, "_cpp_module", None)
    monkeypatch.setattr(dispatch.importlib.util, "find_spec", lambda name: type("Spec", (), {"origin": str(fake)}))
    with pytest.warns(RuntimeWarning) as caught:
        assert dispatch._load_cpp() is None
        assert dispatch._load_cpp() is None  # checked once
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "built against torch 1.0.0" in msg and f"torch {torch.__version__} is running" in msg
    assert "--no-build-isolation" in msg


def test_built_extension_records_the_running_torch():
    if not dispatch.has_cpp():
        pytest.skip("C++ extension not built")
    import unimri_kernels._C as ext

    assert dispatch.built_torch_version(ext.__file__) == torch.__version__.split("+")[0]
