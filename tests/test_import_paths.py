"""Import paths that users' code may hold keep working: each old module path is the module now
at its new place (one module under two names), and ``unimri.nn.eager`` re-exports the
plain-PyTorch baseline of ``unimri.nn.plain`` under its old names."""
from __future__ import annotations

import importlib

import pytest

MOVED = {
    "unimri.train.ablation": "unimri.studies.ablation",
    "unimri.train.evaluate": "unimri.infer.evaluate",
    "unimri.train.peer": "unimri.studies.peer",
    "unimri.train.plots": "unimri.runtime.plots",
    "unimri.train.predict": "unimri.infer.predict",
    "unimri.train.stats": "unimri.studies.stats",
    "unimri.train.throughput": "unimri.studies.throughput",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_module_path_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_nn_eager_reexports_the_plain_baseline():
    from unimri.nn import eager, plain

    assert eager.with_eager_attention is plain.with_plain_modules
    assert eager.OktayAttentionGate is plain.OktayAttentionGate
    assert eager.OktaySelectiveAttention is plain.OktaySelectiveAttention
