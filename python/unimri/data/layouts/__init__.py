"""Folder layouts: importing this package registers each with :mod:`unimri.data.registry`."""
from . import atlas, brats2015, bus2017, ddti, lits, nnunet  # noqa: F401
