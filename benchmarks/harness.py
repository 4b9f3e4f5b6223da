"""Benchmark harness: timing, memory, bandwidth and result files (CSV, table, PNG bars).

Benchmarks are measurements, never assertions. Each ``bench_<op>.py`` beside this file
defines ``run(rec: Recorder, quick: bool, device: str) -> None`` and records rows with
:meth:`Recorder.add`; ``python benchmarks/run.py`` runs them and writes the files.
"""
from __future__ import annotations

import csv
import datetime as _dt
import gc
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

FIELDS = ["op", "provider", "mode", "metric", "unit", "size", "p50", "p20", "p80",
          "device", "isa", "kernel_variant", "torch", "triton", "timestamp", "note", "commit", "command"]

_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
              "asimd", "sve", "sve2", "bf16")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def cpu_isa() -> str:
    """ATen's CPU capability and the vector ISA flags of this CPU, e.g. "AVX512: avx2 fma ... amx_bf16"."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    have = " ".join(f for f in _ISA_FLAGS if f in flags)
    return f"{torch.backends.cpu.get_cpu_capability()}: {have}" if have else torch.backends.cpu.get_cpu_capability()


def kernel_variant(device: str) -> str:
    """Which unimri kernels run on ``device``: the C++ build (avx512/avx2/baseline) or triton."""
    from unimri_kernels.dispatch import backend_for, cpu_variant

    backend = backend_for(torch.empty(0, device=device))
    if backend == "cpp":
        return f"cpp-{cpu_variant()}"
    return backend


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str = "cpu", warmup: int = 2, repeat: int = 10,
            min_time_s: float = 0.0) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile of ``fn``'s wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start_all) < min_time_s:
        times.append(_elapsed_ms(fn, device))
        if len(times) >= 10 * repeat:
            break
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return statistics.median(times), q[1], q[7]


def _elapsed_ms(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(fns: dict[str, Callable[[], object]], device: str = "cpu", warmup: int = 2,
                     repeat: int = 10) -> dict[str, tuple[float, float, float]]:
    """Median, 20th and 80th percentile (ms) per provider, timed round-robin (one call of each
    per round) so that load from other processes hits every provider alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(_elapsed_ms(fn, device))
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
        out[name] = (statistics.median(ts), q[1], q[7])
    return out


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_memory_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak memory ``fn`` allocates above what was live before it (bytes).

    CUDA: the caching allocator's peak. CPU: the process's peak resident set (VmHWM,
    reset through /proc/self/clear_refs) above the resident set before the call.
    """
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - base)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return -1
    base = _rss_bytes("VmRSS")
    fn()
    return max(0, _rss_bytes("VmHWM") - base)


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (forward only)."""
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        nonlocal total
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        # detach: returning ``t`` itself would tie saved outputs to their own grad_fn, a
        # reference cycle that keeps the whole graph (GBs for a backbone) alive
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def copy_bandwidth_gbs(nbytes: int, device: str) -> float:
    """Achieved GB/s of a device-to-device copy of ``nbytes`` (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    p50, _, _ = time_fn(lambda: dst.copy_(src), device=device, warmup=3, repeat=20)
    return 2 * src.numel() * 4 / (p50 * 1e-3) / 1e9


@dataclass
class Row:
    op: str
    provider: str
    mode: str
    metric: str
    unit: str
    size: str
    p50: float
    p20: float = float("nan")
    p80: float = float("nan")
    device: str = ""
    isa: str = ""
    kernel_variant: str = ""
    torch: str = field(default_factory=lambda: torch.__version__)
    triton: str = ""
    timestamp: str = ""
    note: str = ""
    commit: str = ""
    command: str = ""


def compile_wanted() -> bool:
    """Whether the ``torch.compile`` providers and variants are measured: only when asked
    (``benchmarks/run.py --compile`` or ``UNIMRI_BENCH_COMPILE=1``): inductor spends minutes
    compiling before the first timed call."""
    return os.environ.get("UNIMRI_BENCH_COMPILE", "0") == "1"


def _triton_version() -> str:
    """Triton's installed version, read from its metadata: importing triton into the process
    being measured slowed the fused loss's step about 2x in later timings on CPU (measured)."""
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return ""


class Recorder:
    """Collects rows and writes ``<stem>.csv``, ``<stem>.md`` and ``<stem>.png``."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.device_label = device_name(device)
        self.isa = "" if device.startswith("cuda") else cpu_isa()
        self.kernel_variant = kernel_variant(device)
        self.rows: list[Row] = []
        self._stream = None  # open CSV that receives each row as it is recorded (see stream_to)
        self._stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._triton = _triton_version()
        from unimri.runtime.provenance import command_line, git_commit

        self._commit, self._command = git_commit(), command_line()

    def stream_to(self, path: str) -> None:
        """Write every row to the CSV at ``path`` as soon as it is recorded (header first), so a
        run stopped by a time limit keeps what it measured; :meth:`write` later replaces the file
        with the same rows."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._stream = open(path, "w", newline="")
        csv.DictWriter(self._stream, fieldnames=FIELDS).writeheader()
        for r in self.rows:
            self._append(r)
        self._stream.flush()

    def _append(self, row: Row) -> None:
        csv.DictWriter(self._stream, fieldnames=FIELDS).writerow(asdict(row))
        self._stream.flush()

    def add(self, op: str, provider: str, mode: str, metric: str, unit: str, size: str,
            p50: float, p20: float = float("nan"), p80: float = float("nan"), note: str = "") -> None:
        row = Row(op, provider, mode, metric, unit, size, float(p50), float(p20),
                  float(p80), self.device_label, self.isa, self.kernel_variant,
                  torch.__version__, self._triton, self._stamp, note, self._commit, self._command)
        self.rows.append(row)
        if self._stream is not None:
            self._append(row)

    def time(self, op: str, provider: str, mode: str, size: str, fn: Callable[[], object],
             repeat: int = 10, warmup: int = 2, note: str = "") -> float:
        """Time ``fn`` and record a ``time`` row; returns the median in ms."""
        p50, p20, p80 = time_fn(fn, self.device, warmup=warmup, repeat=repeat)
        self.add(op, provider, mode, "time", "ms", size, p50, p20, p80, note)
        return p50

    def time_interleaved(self, op: str, mode: str, size: str, fns: dict[str, Callable[[], object]],
                         repeat: int = 10, warmup: int = 2, notes: dict[str, str] | None = None) -> dict[str, float]:
        """Time providers round-robin (see :func:`time_interleaved`); one ``time`` row each.
        Returns the medians in ms."""
        stats = time_interleaved(fns, self.device, warmup=warmup, repeat=repeat)
        for name, (p50, p20, p80) in stats.items():
            self.add(op, name, mode, "time", "ms", size, p50, p20, p80, (notes or {}).get(name, ""))
        return {name: st[0] for name, st in stats.items()}

    def write(self, out_dir: str, stem: str) -> list[str]:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        os.makedirs(out_dir, exist_ok=True)
        paths = [self._write_csv(out_dir, stem), self._write_table(out_dir, stem)]
        png = self._write_plot(out_dir, stem)
        if png:
            paths.append(png)
        return paths

    def _atomic(self, path: str, text: str) -> str:
        from unimri._atomic import atomic_write_text

        return atomic_write_text(path, text)

    def _write_csv(self, out_dir: str, stem: str) -> str:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS)
        w.writeheader()
        for r in self.rows:
            w.writerow(asdict(r))
        return self._atomic(os.path.join(out_dir, f"{stem}.csv"), buf.getvalue())

    def table(self) -> str:
        isa = f"; ISA {self.isa}" if self.isa else ""
        lines = [f"Device: {self.device_label}{isa}; unimri kernels {self.kernel_variant}; "
                 f"torch {torch.__version__}; triton {self._triton or '-'}", "",
                 "| op | size | mode | metric | provider | p50 | unit | note |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.op} | {r.size} | {r.mode} | {r.metric} | {r.provider} | "
                         f"{r.p50:.4g} | {r.unit} | {r.note} |")
        return "\n".join(lines) + "\n"

    def _write_table(self, out_dir: str, stem: str) -> str:
        return self._atomic(os.path.join(out_dir, f"{stem}.md"), self.table())

    def _write_plot(self, out_dir: str, stem: str) -> str | None:
        timed = [r for r in self.rows if r.metric == "time"]
        if not timed:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = sorted({(r.op, r.size, r.mode) for r in timed})
        providers = sorted({r.provider for r in timed})
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
        width = 0.8 / max(1, len(providers))
        for i, prov in enumerate(providers):
            xs, ys = [], []
            for j, g in enumerate(groups):
                hit = [r for r in timed if (r.op, r.size, r.mode) == g and r.provider == prov]
                if hit:
                    xs.append(j + i * width)
                    ys.append(hit[0].p50)
            ax.bar(xs, ys, width=width, label=prov)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{o}\n{s}\n{m}" for o, s, m in groups], fontsize=7)
        ax.set_ylabel("median time (ms, log)")
        ax.set_yscale("log")
        ax.set_title(f"unimri {stem} — {self.device_label}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        from unimri._atomic import atomic_write_bytes

        path = atomic_write_bytes(os.path.join(out_dir, f"{stem}.png"), lambda fh: fig.savefig(fh, format="png", dpi=110))
        plt.close(fig)
        return path
