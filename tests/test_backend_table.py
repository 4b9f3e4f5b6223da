"""docs/backends.md's table of backends per op and device holds: every cell is checked against
what dispatch does. An op's implementation is read off the run: a ``unimri::*_cpu`` op in the
profiler's events is the C++ kernel, a launch of an interpreted Triton kernel is the Triton
kernel, neither is the PyTorch composite. The CUDA column needs no GPU: ``backend_for`` on a
CUDA fake tensor names the backend CUDA tensors get, and the op body is run with that backend
on CPU tensors (the Triton kernels in the interpreter)."""
from __future__ import annotations

import os
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from unimri_kernels import dispatch
from unimri_kernels.dispatch import use_backend

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "backends.md")
KINDS = ("C++ kernel", "Triton kernel", "PyTorch composite")
HAS_TRITON_CPU = "triton" in dispatch.available_backends("cpu")


def read_table(path: str = DOC) -> dict[str, dict[str, str]]:
    """{op: {column header: cell}} from the first markdown table whose first header is "op"."""
    rows = [line.strip() for line in open(path) if line.strip().startswith("|")]
    cells = [[c.replace("`", "").strip() for c in row.strip("|").split("|")] for row in rows]
    header = cells[0]
    assert header[0] == "op", f"{path}: the table's first column must be 'op', got {header}"
    body = [r for r in cells[1:] if not re.fullmatch(r"-+", r[0].replace(":", ""))]
    return {r[0]: dict(zip(header[1:], r[1:])) for r in body}


def _gate_inputs(gates: int | None):
    """x (2, 4, 8, 6), g (2, 5, 4, 3) and one gate's parameters, or ``gates`` stacked."""
    gen = torch.Generator().manual_seed(0)
    k = () if gates is None else (gates,)
    x, g = torch.randn(2, 4, 8, 6, generator=gen), torch.randn(2, 5, 4, 3, generator=gen)
    params = [torch.randn(*k, 3, 4, 2, 2, generator=gen), torch.randn(*k, 3, 5, generator=gen),
              torch.randn(*k, 3, generator=gen), torch.randn(*k, 3, generator=gen),
              torch.randn(*(k or (1,)), generator=gen)]
    return [x, g, *params, 2, 1.0]


def _op_call(op: str):
    """A call of ``torch.ops.unimri.<op>`` on small CPU inputs."""
    gen = torch.Generator().manual_seed(1)
    name = op.split("::")[1]
    if name == "unified_focal_loss":
        args = [torch.randn(2, 3, 20, generator=gen), torch.randint(0, 3, (2, 20), generator=gen),
                torch.rand(4, 3, generator=gen, dtype=torch.float64), 0.4, 0.6, 1e-6, -100, False, True, False]
    elif name == "attention_gate":
        args = _gate_inputs(None)
    elif name in ("attention_gates", "attention_gates_alpha"):
        args = _gate_inputs(2)
    elif name == "sas_head":
        x = torch.randn(2, 4, 6, 5, generator=gen)
        args = [x, torch.rand(2, 2, 6, 5, generator=gen), torch.randn(2, 4, 4, generator=gen),
                torch.rand(2, 4, generator=gen) + 0.5, torch.randn(2, 4, generator=gen),
                torch.randn(3, 2, 4, generator=gen), 1e-5]
    elif name == "batch_norm_relu":
        args = [torch.randn(2, 3, 5, 4, generator=gen), torch.rand(3, generator=gen), torch.randn(3, generator=gen),
                None, None, 1e-5]
    elif name == "max_pool2x":
        args = [torch.randn(2, 3, 6, 8, generator=gen)]
    elif name == "pointwise_conv":
        args = [torch.randn(2, 3, 5, 4, generator=gen), torch.randn(2, 3, generator=gen), torch.randn(2, generator=gen)]
    else:
        raise AssertionError(f"docs/backends.md names {op}, which this test cannot call: add its inputs here")
    return lambda: getattr(torch.ops.unimri, name)(*args)


def implementation(call, monkeypatch) -> str:
    """Which kind of implementation ``call`` ran: C++ kernel, Triton kernel or PyTorch composite."""
    triton_launches = []
    if HAS_TRITON_CPU:
        from triton.runtime.interpreter import InterpretedFunction

        launch = InterpretedFunction.run

        def counting_run(self, *args, **kwargs):
            triton_launches.append(self)
            return launch(self, *args, **kwargs)

        monkeypatch.setattr(InterpretedFunction, "run", counting_run)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    monkeypatch.undo()
    cpp = [e.name for e in prof.events() if re.fullmatch(r"unimri::\w+_cpu", e.name)]
    if triton_launches:
        return "Triton kernel"
    return "C++ kernel" if cpp else "PyTorch composite"


def cuda_backend() -> str:
    """The backend dispatch gives CUDA tensors (read on a fake CUDA tensor: no GPU needed)."""
    with FakeTensorMode():
        t = torch.empty(2, device="cuda")
    return dispatch.backend_for(t)


TABLE = read_table()
COLUMNS = {"CPU": "auto", "CUDA": "cuda",
           "CPU, UNIMRI_BACKEND=triton + TRITON_INTERPRET=1": "triton",
           "any device, UNIMRI_BACKEND=reference": "reference"}


def custom_ops() -> set[str]:
    """Every forward custom op defined in a module of unimri_kernels.ops (backward ops excluded)."""
    import importlib
    import pkgutil

    import unimri_kernels.ops as ops_pkg
    from torch._library.custom_ops import CustomOpDef

    found = set()
    for info in pkgutil.iter_modules(ops_pkg.__path__):
        module = importlib.import_module(f"unimri_kernels.ops.{info.name}")
        found |= {v._qualname for v in vars(module).values() if isinstance(v, CustomOpDef)}
    return {op for op in found if not op.endswith("_backward")}


def test_table_lists_every_custom_op_and_column():
    ops = custom_ops()
    assert ops == set(TABLE), (f"docs/backends.md lacks {sorted(ops - set(TABLE))}, "
                               f"names ops that do not exist {sorted(set(TABLE) - ops)}")
    for op, row in TABLE.items():
        assert set(row) == set(COLUMNS), f"{op}: columns {sorted(row)}"
        assert set(row.values()) <= set(KINDS), f"{op}: {row}"


@pytest.mark.parametrize("column", list(COLUMNS))
@pytest.mark.parametrize("op", list(TABLE))
def test_table_cell_matches_dispatch(op, column, monkeypatch):
    monkeypatch.delenv("UNIMRI_BACKEND", raising=False)
    custom_ops()  # imports every op module (unimri::sas_head is registered by its own alone)
    backend = COLUMNS[column]
    if backend == "cuda":
        assert dispatch.has_triton(), "triton is not installed: the CUDA column would read PyTorch composite"
        backend = cuda_backend()
        assert backend == "triton"
    if backend == "auto" and not dispatch.has_cpp():
        pytest.fail("unimri_kernels._C is not loaded: the CPU column cannot hold")
    if backend == "triton" and not HAS_TRITON_CPU:
        pytest.skip("needs triton with TRITON_INTERPRET=1 to run the Triton kernels on the CPU")
    with use_backend(backend):
        got = implementation(_op_call(op), monkeypatch)
    assert got == TABLE[op][column], f"{op}, {column}: docs/backends.md says {TABLE[op][column]}, dispatch ran {got}"
