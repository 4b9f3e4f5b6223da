"""Where a results file came from: code, command, machine, software, date, cost and load.

Every results file of a study carries one :func:`provenance` record, so that a published
number can be traced to the commit and machine that produced it.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any


def git_commit(path: str | None = None) -> str:
    """The commit checked out where unimri's source lives (``"+dirty"`` appended when the
    tracked files differ from it), or ``"unknown"`` outside a git checkout."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (``lscpu``/``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, the ISA ATen dispatches to, core count, OS and accelerator."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
                            "cpus": os.cpu_count(), "os": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes of ``--jobs``)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def command_line() -> str:
    """This process's command line as typed: ``unimri ...`` or ``python -m unimri ...``."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program == "__main__.py":
        program = "python -m " + os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0])))
    return " ".join([program, *sys.argv[1:]])


class Stopwatch:
    """Wall time, CPU time and load average from creation to :meth:`record`."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        self.load0 = _load()

    def record(self, command: str | None = None) -> dict[str, Any]:
        """The provenance record of the work done since this stopwatch started."""
        import torch

        return {
            "commit": git_commit(),
            "command": command if command is not None else command_line(),
            "machine": machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wall_seconds": round(time.perf_counter() - self.wall0, 1),
            "cpu_seconds": round(cpu_seconds() - self.cpu0, 1),
            "load_average": {"start": self.load0, "end": _load()},
        }


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
