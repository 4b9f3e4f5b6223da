"""The old import path of :mod:`unimri.studies.stats`, which it is (one module under two names)."""
import sys

from unimri.studies import stats as _module

sys.modules[__name__] = _module
