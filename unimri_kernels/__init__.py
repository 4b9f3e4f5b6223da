"""unimri kernel package: custom-op schemas, dispatch, Triton kernels and references.

Importing registers the ``unimri::*`` custom ops. :func:`route` says which implementation
runs an op (the rule and every environment switch: :mod:`unimri_kernels.dispatch`). The C++
CPU kernels live in the compiled ``unimri_kernels._C``; if it is missing the PyTorch
reference is used and a single warning says so. :func:`cpu_variant` names the build of the
C++ kernels in use (AVX-512, AVX2 or the portable baseline, chosen at run time); their large
outputs come from a pool of recycled blocks (:func:`cpu_pool_stats`, :func:`release_cpu_pool`).
"""
from unimri_kernels.dispatch import (  # noqa: F401
    available_backends,
    backend_for,
    cpu_pool_stats,
    cpu_variant,
    cpu_variants,
    release_cpu_pool,
    route,
    use_backend,
)
from unimri_kernels import ops  # noqa: F401  (registers the custom ops)

__all__ = ["available_backends", "backend_for", "cpu_pool_stats", "cpu_variant", "cpu_variants",
           "release_cpu_pool", "route", "use_backend", "ops"]
