"""PNG figures: learning curves per loss (the paper's figure 3) and overlays of prediction
vs ground truth (its figures 4 and 5). Matplotlib on the Agg backend, written atomically."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from unimri._atomic import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    _plt().close(fig)
    return path


def plot_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str,
                title: str = "") -> str:
    """Loss and validation DSC per epoch, one line per run label.

    ``histories[label]`` is that run's epoch records (``epoch``, ``train_loss``,
    ``val_loss``, ``val_dsc``); several folds under one label are averaged per epoch.
    """
    plt = _plt()
    fig, (ax_loss, ax_dsc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, records) in enumerate(histories.items()):
        color = f"C{i % 10}"
        by_epoch: dict[int, list[Mapping[str, Any]]] = {}
        for r in records:
            by_epoch.setdefault(int(r["epoch"]), []).append(r)
        epochs = sorted(by_epoch)
        if not epochs:
            continue

        def mean(key: str) -> list[float]:
            return [float(np.nanmean([float(r.get(key, np.nan)) for r in by_epoch[e]])) for e in epochs]

        xs = [e + 1 for e in epochs]
        ax_loss.plot(xs, mean("train_loss"), "--", color=color, alpha=0.6, label=f"{label} (train)")
        ax_loss.plot(xs, mean("val_loss"), "-", color=color, label=f"{label} (val)")
        ax_dsc.plot(xs, mean("val_dsc"), "-o", ms=3, color=color, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss per epoch")
    ax_dsc.set_xlabel("epoch")
    ax_dsc.set_ylabel("validation DSC (foreground)")
    ax_dsc.set_ylim(0, 1)
    ax_dsc.set_title("DSC per epoch")
    for ax in (ax_loss, ax_dsc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def draw_overlay_panel(ax, image: np.ndarray, mask: np.ndarray | None = None,
                       tint: tuple[float, float, float] = (0.95, 0.15, 0.1), alpha: float = 0.5,
                       truth: np.ndarray | None = None, title: str = "", ylabel: str = "",
                       title_size: int = 8) -> None:
    """One overlay panel: the grey image (H, W, display orientation), an optional binary mask
    (H, W) filled in ``tint`` at ``alpha``, and the ground truth's (H, W) outline in green."""
    ax.imshow(image, cmap="gray", origin="lower")
    if mask is not None:
        filled = np.asarray(mask, dtype=bool)
        rgba = np.zeros((*filled.shape, 4), dtype=np.float32)
        rgba[filled] = (*tint, alpha)
        ax.imshow(rgba, origin="lower")
    if truth is not None and truth.any():
        ax.contour(truth.astype(float), levels=[0.5], colors=["lime"], linewidths=0.8, origin="lower")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=title_size)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=7)


def plot_overlays(cases: Sequence[Mapping[str, Any]], path: str, title: str = "") -> str:
    """One row per case: the image with ground truth, then each method's prediction.

    ``cases[i]`` = {"case_id": str, "image": (H, W) array, "label": (H, W) int array,
    "predictions": {method: (H, W) int array}}. Ground truth is drawn as a green
    contour on every panel, each prediction as a red filled overlay.
    """
    plt = _plt()
    if not cases:
        raise ValueError("plot_overlays: cases is empty")
    methods = list(cases[0]["predictions"])
    ncols = 1 + len(methods)
    fig, axes = plt.subplots(len(cases), ncols, figsize=(2.6 * ncols, 2.6 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        image = np.asarray(case["image"], dtype=np.float32)
        label = np.asarray(case["label"])
        panels = [("ground truth", label)] + [(m, np.asarray(case["predictions"][m])) for m in methods]
        for col, (name, mask) in enumerate(panels):
            draw_overlay_panel(axes[row][col], image.T, (mask > 0).T, truth=(label > 0).T if col > 0 else None,
                               tint=(0.1, 0.9, 0.1) if col == 0 else (0.95, 0.15, 0.1),
                               alpha=0.45 if col == 0 else 0.5, title=name if row == 0 else "",
                               ylabel=str(case["case_id"]) if col == 0 else "")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(bars: Sequence[tuple[str, float, float, Any]], path: str, title: str = "",
              ylabel: str = "DSC") -> str:
    """Bar chart with error bars: one bar per variant.

    ``bars[i]`` = (label, mean, std, note): ``note`` is printed above the bar (e.g. the
    p-value against the baseline, or "baseline").
    """
    plt = _plt()
    if not bars:
        raise ValueError("plot_bars: bars is empty")
    labels = [b[0] for b in bars]
    means = np.array([b[1] for b in bars], dtype=np.float64)
    stds = np.array([b[2] for b in bars], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bars) + 1.5), 4.2))
    xs = np.arange(len(bars))
    colors = ["0.6"] + [f"C{i % 10}" for i in range(len(bars) - 1)]
    ax.bar(xs, np.nan_to_num(means), yerr=np.nan_to_num(stds), capsize=4, color=colors, alpha=0.85)
    for x, (mean, std, bar) in enumerate(zip(means, stds, bars)):
        text = str(bar[3]) if bar[3] is not None else ""
        ax.text(x, min(1.02, np.nan_to_num(mean) + np.nan_to_num(std) + 0.02), text, ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.1)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def epoch_clock(records: Sequence[Mapping[str, Any]]) -> str:
    """The epoch-time key to plot: ``"cpu_seconds"`` (the training process's CPU time, which
    other load on a shared machine does not inflate) when every record has it, else
    ``"seconds"`` (wall time; records of runs made before CPU time was logged)."""
    return "cpu_seconds" if records and all("cpu_seconds" in r for r in records) else "seconds"


CLOCK_LABELS = {"cpu_seconds": "training CPU time, s (1 thread per run; mean over runs; incl. validation)",
                "seconds": "training wall time, s (mean over runs; incl. validation)"}


def time_to_quality_curve(records: Sequence[Mapping[str, Any]], clock: str | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative training seconds, validation DSC) per epoch, averaged over runs.

    ``records``: epoch records of one or more runs (``fold``, ``epoch``, ``seconds`` and/or
    ``cpu_seconds``, ``val_dsc``; a ``seed`` key, when present, separates runs with equal
    fold numbers). ``clock``: the time key (default :func:`epoch_clock`).
    Runs are aligned by epoch; an epoch only some runs reached is averaged over those.
    """
    clock = clock or epoch_clock(records)
    runs: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for r in records:
        runs.setdefault((r.get("seed"), r.get("fold")), []).append(r)
    times: dict[int, list[float]] = {}
    dscs: dict[int, list[float]] = {}
    for recs in runs.values():
        elapsed = 0.0
        for r in sorted(recs, key=lambda r: int(r["epoch"])):
            elapsed += float(r[clock])
            times.setdefault(int(r["epoch"]), []).append(elapsed)
            dscs.setdefault(int(r["epoch"]), []).append(float(r["val_dsc"]))
    epochs = sorted(times)
    return (np.array([np.mean(times[e]) for e in epochs]), np.array([np.nanmean(dscs[e]) for e in epochs]))


def plot_time_to_quality(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str,
                         title: str = "") -> str:
    """Validation DSC against cumulative training time (CPU time when every run logged it,
    else wall time: :func:`epoch_clock`), one line per label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    clock = epoch_clock([r for records in histories.values() for r in records])
    for i, (label, records) in enumerate(histories.items()):
        t, dsc = time_to_quality_curve(records, clock)
        if t.size:
            ax.plot(t, dsc, "-o", ms=3, color=f"C{i % 10}", label=label)
    ax.set_xlabel(CLOCK_LABELS[clock])
    ax.set_ylabel("validation DSC (foreground)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_imbalance(series: Mapping[str, Sequence[tuple[float, float, float]]], path: str,
                   title: str = "") -> str:
    """DSC against the foreground fraction (log x axis), one line with error bars per method.

    ``series[method]`` = [(fraction, mean, std), ...].
    """
    plt = _plt()
    if not series:
        raise ValueError("plot_imbalance: series is empty")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, points) in enumerate(series.items()):
        pts = sorted(points)
        xs = [100 * p[0] for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="-o", ms=4, capsize=4,
                    color=f"C{i % 10}", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("lesion area (% of the image, per case)")
    ax.set_ylabel("DSC (mean ± std over seeds × folds)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
