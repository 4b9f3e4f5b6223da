"""The old import path of :mod:`unimri.runtime.resize`, which it is (one module under two names)."""
import sys

from unimri.runtime import resize as _module

sys.modules[__name__] = _module
