"""The old import path of :mod:`unimri.studies.peer`, which it is (one module under two names)."""
import sys

from unimri.studies import peer as _module

sys.modules[__name__] = _module
