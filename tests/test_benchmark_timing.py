"""The timing loop of `unimri bench` and the training benchmarks: providers in turn, each for
a block of consecutive calls whose first call is not timed."""
from __future__ import annotations

import os
import sys

from unimri.studies.throughput import interleaved_times, measure_training_throughput


def _recorder(calls: list[str], name: str):
    return lambda: calls.append(name)


def test_blocks_run_in_turn_and_skip_each_blocks_first_call():
    calls: list[str] = []
    steps = {"a": _recorder(calls, "a"), "b": _recorder(calls, "b")}
    times = interleaved_times(steps, repeat=2, device="cpu", warmup=1, block=3)
    assert calls == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}


def test_times_are_milliseconds_of_the_step_alone():
    """Steps of known duration (sleeps of 2 and 12 ms): every timed call is at least its sleep
    and, on a busy shared machine, well under its sleep plus 100 ms; the medians keep the order."""
    import statistics
    import time

    times = interleaved_times({"short": lambda: time.sleep(0.002), "long": lambda: time.sleep(0.012)},
                              repeat=2, device="cpu", warmup=0, block=3)
    assert all(2.0 <= t < 102.0 for t in times["short"]), times
    assert all(12.0 <= t < 112.0 for t in times["long"]), times
    assert statistics.median(times["long"]) > statistics.median(times["short"])


def test_block_of_one_times_every_call():
    calls: list[str] = []
    times = interleaved_times({"a": _recorder(calls, "a")}, repeat=3, device="cpu", warmup=0, block=1)
    assert calls == ["a"] * 3 and len(times["a"]) == 3


def test_benchmarks_use_the_same_loop():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import trainsteps

    assert trainsteps.interleaved_times is interleaved_times


def test_bench_times_the_requested_steps_per_backend():
    rows = measure_training_throughput(size=16, batch_size=1, features=4, steps=3, device="cpu",
                                       backends=("auto", "reference"))
    assert [r["backend"] for r in rows] == ["auto", "reference"]
    assert all(r["ms_per_step"] > 0 and r["ms_min"] <= r["ms_per_step"] for r in rows)
