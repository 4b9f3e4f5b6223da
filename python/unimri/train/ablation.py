"""The old import path of :mod:`unimri.studies.ablation`, which it is (one module under two names)."""
import sys

from unimri.studies import ablation as _module

sys.modules[__name__] = _module
