"""The old import path of :mod:`unimri.studies.throughput`, which it is (one module under two names)."""
import sys

from unimri.studies import throughput as _module

sys.modules[__name__] = _module
