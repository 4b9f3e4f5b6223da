"""unimri kernel package: custom-op schemas, dispatch, Triton kernels and references.

Importing registers the ``unimri::*`` custom ops. The C++ CPU kernels live in the
compiled ``unimri_kernels._C``; if it is missing the PyTorch reference is used and a
single warning says so.
"""
from unimri_kernels.dispatch import available_backends, backend_for, use_backend  # noqa: F401
from unimri_kernels import ops  # noqa: F401  (registers the custom ops)

__all__ = ["available_backends", "backend_for", "use_backend", "ops"]
