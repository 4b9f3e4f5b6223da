"""The old import path of :mod:`unimri.runtime.plots`, which it is (one module under two names)."""
import sys

from unimri.runtime import plots as _module

sys.modules[__name__] = _module
