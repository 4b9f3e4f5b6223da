"""The old import path of :mod:`unimri.runtime.registry`, which it is (one module under two names)."""
import sys

from unimri.runtime import registry as _module

sys.modules[__name__] = _module
