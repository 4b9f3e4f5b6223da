"""The old import path of :mod:`unimri.runtime.precision`, which it is (one module under two names)."""
import sys

from unimri.runtime import precision as _module

sys.modules[__name__] = _module
