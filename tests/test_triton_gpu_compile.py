"""Every Triton kernel compiles to cubin for real GPUs (sm_80, sm_90, sm_100) with the
block sizes, dtypes and constexprs the CUDA launchers choose, on this CPU machine.

The launchers run on meta tensors with their kernels' ``run`` recorded; each recorded
launch is specialised as the JIT would and compiled by triton's bundled ptxas in a
subprocess (the test process runs the kernels in the interpreter). The test compiles a
pointed subset (``compile_check --matrix smoke``: the largest tiles of every kernel,
dtype and dot precision on sm_90, the bf16 dot kernels on sm_80/sm_100, and two controls:
a dot tile under 16 that must fail and a float atomic that must be counted);
``benchmarks/triton_compile_report.py`` compiles the whole matrix and writes
``benchmarks/results/triton_compile.md``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

import unimri_kernels  # noqa: E402
from unimri_kernels.compile_check import (ARCHS, DOT_KERNELS,  # noqa: E402
                                          MAX_SHARED, kernel_objects)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    """Results of ``python -m unimri_kernels.compile_check --matrix smoke``."""
    out = tmp_path_factory.mktemp("compile") / "smoke.json"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # compiling needs the real JIT functions
    root = Path(unimri_kernels.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "unimri_kernels.compile_check", "--matrix", "smoke",
         "--arch", *map(str, ARCHS), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())["results"]


def _regular(results):
    return [r for r in results if not any(p.startswith("control") for p in r["problems"])]


def _dtype(result) -> str:
    return result["config"].split(",")[0].lstrip("*")


def test_every_kernel_compiles_for_sm90_and_the_dot_kernels_for_every_arch(compiled):
    results = _regular(compiled)
    failed = [(r["kernel"], r["arch"], r["config"], r["error"]) for r in results if r["error"]]
    assert not failed, failed
    assert {r["kernel"] for r in results if r["arch"] == 90} == set(kernel_objects())
    for arch in ARCHS:
        built = {(r["kernel"], _dtype(r)) for r in results if r["arch"] == arch}
        for kernel in DOT_KERNELS:
            assert (kernel, "bf16") in built, arch
            assert arch != 90 or (kernel, "fp32") in built
    for r in results:
        assert 0 < r["n_regs"] <= 255, r
        if r["kernel"] in DOT_KERNELS:  # tl.dot operands are staged in shared memory
            assert r["shared"] > 0, r


def test_registers_allow_two_programs_per_sm(compiled):
    """65,536 registers per SM on sm_80/sm_90/sm_100: two programs of every fp32/half
    configuration fit (fp64 tiles are allowed one)."""
    heavy = [(r["kernel"], r["arch"], r["config"], r["n_regs"], r["num_warps"])
             for r in _regular(compiled) if _dtype(r) != "fp64"
             and 2 * r["n_regs"] * 32 * r["num_warps"] > 65536]
    assert not heavy, heavy


def test_no_register_spills_in_fp32_and_half_configs(compiled):
    spills = [(r["kernel"], r["arch"], r["config"], r["n_spills"]) for r in _regular(compiled)
              if _dtype(r) in ("fp32", "bf16", "fp16") and r["n_spills"] != 0]
    assert not spills, spills


def test_shared_memory_fits_every_arch(compiled):
    over = [(r["kernel"], r["arch"], r["config"], r["shared"]) for r in _regular(compiled)
            if r["shared"] > MAX_SHARED[r["arch"]]]
    assert not over, over


def _control(compiled, name):
    return [r for r in compiled if any(p.startswith(f"control: {name}") for p in r["problems"])]


def test_no_kernel_uses_float_atomics(compiled):
    """Every configuration, default mode included: deterministic, no contended atomics."""
    results = _regular(compiled)
    assert results and all(r["atomics"] == 0 for r in results), [
        (r["kernel"], r["config"], r["atomics"]) for r in results if r["atomics"]]
    control = _control(compiled, "atomic_add")  # the TTIR count does see an atomic
    assert len(control) == 1 and not control[0]["error"] and control[0]["atomics"] >= 1, control


def test_a_dot_tile_under_16_fails_as_on_a_gpu(compiled):
    control = _control(compiled, "BLOCK_K=8")
    assert len(control) == 1 and "K >= 16" in control[0]["error"], control
