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


def _extensions():
    if os.environ.get("UNIMRI_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # torch missing at build time: pure-Python install
        print("unimri: torch not importable at build time; skipping the C++ kernels", file=sys.stderr)
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # -fno-math-errno -fno-trapping-math let GCC vectorise branch-free exp/log loops with glibc's
    # libmvec (errno and FP exception flags are never read)
    extra = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-g0", "-DUNIMRI_PYTHON_MODULE"]
    ext = CppExtension(
        "unimri_kernels._C",
        sources,
        extra_compile_args={"cxx": extra},
        extra_link_args=["-fopenmp", "-lmvec"],
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
