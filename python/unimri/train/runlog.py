"""The JSONL log of a run: one JSON object per line (epochs, fold results, events)."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from unimri._atomic import atomic_write_text


class JsonlLog:
    """Appends records to ``path``; each line is one flushed JSON object.

    ``truncate(keep)`` rewrites the file atomically with only the records ``keep`` accepts
    (how ``--resume`` drops the epochs logged after the last checkpoint).
    """

    def __init__(self, path: str | None):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path) if self.path else []

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        if self.path is None or not os.path.exists(self.path):
            return
        kept = [r for r in self.read() if keep(r)]
        atomic_write_text(self.path, "".join(json.dumps(r, default=float) + "\n" for r in kept))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (killed mid-write) is ignored."""
    out: list[dict[str, Any]] = []
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
