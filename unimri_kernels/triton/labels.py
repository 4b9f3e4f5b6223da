"""How the Triton loss reports labels that are neither a class nor ``ignore_index``
without a device-to-host synchronisation.

The stats kernel counts such labels per pixel block and the finish kernel per loss row;
a row with a bad label gets a NaN loss and NaN gradient (so a bad label is never silently
left out, also inside a captured CUDA graph, where nothing else can report it). Then:

* CPU tensors (the interpreter): the count is read at once and ``ValueError`` raised, as
  on the C++ backend (a CPU read waits for nothing).
* CUDA tensors, eager: the counts are copied asynchronously into pinned host memory
  behind an event. The next loss launch (or :func:`raise_pending`, which waits) looks at
  every finished copy and raises the ``ValueError`` there: one step late, never a stall.
* CUDA graph capture: the NaN loss is the report (copies into host memory made during
  capture would be replayed into the same buffer with nobody looking).
* meta tensors: nothing to report.
"""
from __future__ import annotations

import threading

import torch

_lock = threading.Lock()
_pending: list[tuple[object, torch.Tensor, int, int]] = []


def _message(n_bad: int, num_classes: int, ignore_index: int) -> str:
    return (f"unified_focal_loss: target holds {n_bad} label(s) outside [0, {num_classes}) "
            f"that are not ignore_index={ignore_index}")


def _raise_finished(wait: bool) -> None:
    with _lock:
        done = [p for p in _pending if wait or p[0].query()]
        for p in done:
            _pending.remove(p)
    for event, host, num_classes, ignore_index in done:
        event.synchronize()
        n_bad = int(host.sum())
        if n_bad:
            raise ValueError(_message(n_bad, num_classes, ignore_index))


def report_bad_labels(bad: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Report the per-row bad-label counts ``bad`` (G,) of one loss call (see module doc)."""
    dev = bad.device
    if dev.type == "meta":
        return
    if dev.type == "cpu":
        n_bad = int(bad.sum())
        if n_bad:
            raise ValueError(_message(n_bad, num_classes, ignore_index))
        return
    if torch.cuda.is_current_stream_capturing():
        return
    _raise_finished(wait=False)
    host = torch.empty(bad.shape, dtype=bad.dtype, pin_memory=True)
    host.copy_(bad, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    with _lock:
        _pending.append((event, host, num_classes, ignore_index))


def raise_pending() -> None:
    """Wait for every outstanding label report and raise ``ValueError`` if one found a bad
    label (an explicit synchronisation point, e.g. at the end of an epoch or in tests)."""
    _raise_finished(wait=True)
