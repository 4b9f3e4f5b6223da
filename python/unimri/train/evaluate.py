"""The old import path of :mod:`unimri.infer.evaluate`, which it is (one module under two names)."""
import sys

from unimri.infer import evaluate as _module

sys.modules[__name__] = _module
