"""Builds ``unimri_kernels._C`` (the C++/OpenMP CPU kernels) next to the Python packages.

``pip install --no-build-isolation -e .`` (isolation would fetch a CUDA torch into the
build environment). If the compiler or torch headers are missing the build is skipped
and the package falls back to the PyTorch reference at import time.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _packages() -> tuple[list[str], dict[str, str]]:
    py = find_packages(where="python", include=["unimri", "unimri.*"])
    kernels = find_packages(where=".", include=["unimri_kernels", "unimri_kernels.*"])
    package_dir = {p: os.path.join("python", *p.split(".")) for p in py}
    package_dir.update({p: os.path.join(*p.split(".")) for p in kernels})
    return py + kernels, package_dir


def kernel_sources(root: str) -> list[str]:
    """csrc/*.cpp relative to ``root``, the ISA variant builds (kernels_avx2/avx512.cpp) last.

    Link order matters: an inline function emitted by both a baseline and a variant object
    keeps the first copy, which must be the one every CPU runs.
    """
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "csrc", "*.cpp")))
    variants = [n for n in names if n in ("kernels_avx2.cpp", "kernels_avx512.cpp")]
    return [os.path.join("csrc", n) for n in names if n not in variants] + [os.path.join("csrc", n) for n in variants]


def _extensions():
    if os.environ.get("UNIMRI_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # torch missing at build time: pure-Python install
        print("unimri: torch not importable at build time; skipping the C++ kernels", file=sys.stderr)
        return [], {}
    # -fno-math-errno -fno-trapping-math: errno and FP exception flags are never read, so GCC may
    # vectorise math calls; hidden inline copies keep the variant builds' code inside _C.
    extra = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-g0",
             "-fvisibility-inlines-hidden", "-DUNIMRI_PYTHON_MODULE"]
    ext = CppExtension(
        "unimri_kernels._C",
        kernel_sources(ROOT),
        extra_compile_args={"cxx": extra},
        extra_link_args=["-fopenmp"],
        include_dirs=[os.path.join(ROOT, "csrc")],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


packages, package_dir = _packages()
ext_modules, cmdclass = _extensions()
setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    include_package_data=True,
)
