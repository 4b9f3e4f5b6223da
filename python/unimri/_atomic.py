"""Atomic file writes: a temp file in the destination folder, then ``os.replace``, so a
reader never sees a half-written file and a failed write leaves nothing behind."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open(path, "w")`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_path(path: str, write: Callable[[str], object], suffix: str = "") -> str:
    """Call ``write(tmp_path)`` (for writers that take a path and pick the format by
    ``suffix``), then move the finished file to ``path``; on any error remove the temp file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix or os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp alone would leave it owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str, write: Callable[[BinaryIO], object]) -> str:
    """Call ``write(fileobj)`` on a temp file in ``path``'s folder, fsync, then os.replace it."""

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write_path(path, to_file)


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the file and ``what`` it should be."""
    try:
        with open(path) as fh:
            value = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable {what} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a {what} (expected a JSON object)")
    return value
