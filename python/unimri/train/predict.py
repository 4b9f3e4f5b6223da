"""The old import path of :mod:`unimri.infer.predict`, which it is (one module under two names)."""
import sys

from unimri.infer import predict as _module

sys.modules[__name__] = _module
