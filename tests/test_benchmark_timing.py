"""The training benchmarks' timing loop: providers in turn, each for a block of consecutive
calls whose first call is not timed (benchmarks/trainsteps.py)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from trainsteps import interleaved_times  # noqa: E402


def _recorder(calls: list[str], name: str):
    return lambda: calls.append(name)


def test_blocks_run_in_turn_and_skip_each_blocks_first_call():
    calls: list[str] = []
    steps = {"a": _recorder(calls, "a"), "b": _recorder(calls, "b")}
    times = interleaved_times(steps, repeat=2, device="cpu", warmup=1, block=3)
    assert calls == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for v in times.values() for t in v)


def test_block_of_one_times_every_call():
    calls: list[str] = []
    times = interleaved_times({"a": _recorder(calls, "a")}, repeat=3, device="cpu", warmup=0, block=1)
    assert calls == ["a"] * 3 and len(times["a"]) == 3
