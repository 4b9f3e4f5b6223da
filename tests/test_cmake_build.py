"""Drives the CMake build of the op library against libtorch and its ctest smoke test,
so that CMakeLists.txt cannot rot."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cmake_build_and_ctest(tmp_path):
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake/ctest not installed")
    build = tmp_path / "build"
    env = dict(os.environ)
    configure = ["cmake", "-S", ROOT, "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if torch.version.cuda and env.get("CUDA_HOME"):
        configure.append(f"-DCUDA_TOOLKIT_ROOT_DIR={env['CUDA_HOME']}")
    res = subprocess.run(configure, capture_output=True, text=True, env=env)
    if res.returncode != 0 and torch.version.cuda and "cannot find the CUDA" in res.stdout + res.stderr:
        # a CUDA build of libtorch configures only against a CUDA toolkit with its runtime
        pytest.skip(f"torch {torch.__version__} is a CUDA build and CMake finds no CUDA toolkit "
                    "(set CUDA_HOME to one)")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    res = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    test = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout[-4000:] + test.stderr[-4000:]
    assert "100% tests passed" in test.stdout


AARCH64_CXX = "aarch64-linux-gnu-g++"


@pytest.mark.slow
def test_csrc_compiles_for_aarch64():
    """Every csrc/*.cpp parses and type-checks for aarch64 (e.g. GH200) against this torch's
    headers: x86-only variants, target pragmas and __builtin_cpu_supports must stay behind
    #if. Compile-only (-fsyntax-only), so the x86 torch headers suffice."""
    if shutil.which(AARCH64_CXX) is None:
        pytest.skip(f"{AARCH64_CXX} not installed (Debian: apt-get install -y g++-aarch64-linux-gnu)")
    include = os.path.join(os.path.dirname(torch.__file__), "include")
    sources = sorted(os.path.join(ROOT, "csrc", f) for f in os.listdir(os.path.join(ROOT, "csrc")) if f.endswith(".cpp"))
    flags = ["-std=c++20", "-fsyntax-only", "-fopenmp", "-I" + os.path.join(ROOT, "csrc"), "-I" + include,
             "-I" + os.path.join(include, "torch", "csrc", "api", "include")]
    procs = {}
    failures = []
    for src in sources:  # two at a time: the machine has two cores
        procs[src] = subprocess.Popen([AARCH64_CXX, *flags, src], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
        if len(procs) == 2 or src == sources[-1]:
            for name, proc in procs.items():
                out, _ = proc.communicate(timeout=600)
                if proc.returncode != 0:
                    failures.append(f"{os.path.basename(name)}:\n{out[-3000:]}")
            procs = {}
    assert not failures, "\n".join(failures)
