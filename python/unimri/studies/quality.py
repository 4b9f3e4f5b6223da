"""Quality results files and the one table format they are shown in.

A quality results file (JSON, ``format`` :data:`FORMAT`) holds the test scores of a study
under nested cross-validation, one row per (group, method, outer fold, seed), with how they
were obtained and where (:mod:`unimri.runtime.provenance`)::

    {"format": "unimri-quality-1", "study": "components", "dataset": "phantom",
     "group_title": "Model", "column": "Strategy",
     "evaluation": {"folds": 3, "val_fraction": 0.2, "split_seed": 0, "seeds": [0, 1, 2]},
     "provenance": {"commit": ..., "command": ..., "machine": {...}, ...},
     "rows": [{"group": "UNet", "method": "baseline", "fold": 0, "seed": 0,
               "IoU": ..., "DSC": ..., "Precision": ..., "Recall": ...}, ...]}

In each group the first method is the baseline the others are compared with.
:func:`render_table` turns such a record into the markdown that ``unimri demo``/``ablate``
print and that ``benchmarks/report_quality.py`` writes into the docs.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from unimri._atomic import atomic_write_json, read_json_object
from unimri.runtime.metric_names import METRIC_NAMES
from unimri.studies.stats import ALPHA, compare_study, fold_means, format_diff, format_p, hierarchical_bootstrap_ci

FORMAT = "unimri-quality-1"
#: time-to-quality curves (validation DSC against training time) of ``time_to_quality_report``
TTQ_FORMAT = "unimri-ttq-1"


def make_record(study: str, dataset: str, group_title: str, column: str, rows: Sequence[Mapping[str, Any]],
                evaluation: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A quality results record (see the module docstring); rows are checked for their keys."""
    needed = {"group", "method", "fold", "seed", *METRIC_NAMES}
    for i, row in enumerate(rows):
        missing = needed - set(row)
        if missing:
            raise ValueError(f"rows[{i}]: missing {sorted(missing)}")
    return {"format": FORMAT, "study": study, "dataset": dataset, "group_title": group_title,
            "column": column, "evaluation": dict(evaluation), "provenance": dict(provenance),
            "rows": [dict(r) for r in rows]}


def fold_row(group: str, method: str, seed: int, fold_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One results row from a fold's ``result.json`` metrics; ``"diverged": true`` when a
    non-finite training loss ended that fold's training (``on_nonfinite="end"``)."""
    row = {"group": group, "method": method, "fold": int(fold_metrics["fold"]), "seed": int(seed),
           **{m: float(fold_metrics[m]) for m in METRIC_NAMES}}
    if fold_metrics.get("diverged"):
        row["diverged"] = True
    return row


def write_record(path: str, record: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(record))


def read_record(path: str, fmt: str = FORMAT) -> dict[str, Any]:
    """A quality results file of format ``fmt``; ValueError naming the file when it is not one."""
    record = read_json_object(path, "quality results file")
    if record.get("format") != fmt:
        raise ValueError(f"{path}: not a results file of format {fmt!r}")
    return record


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _scores(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[int, int], float]:
    return {(int(r["fold"]), int(r["seed"])): float(r[metric]) for r in rows}


def _mean_std_over_folds(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    means = list(fold_means(_scores(rows, metric)).values())
    if not means:
        return "—"
    mean = sum(means) / len(means)
    std = math.sqrt(sum((m - mean) ** 2 for m in means) / len(means))
    return f"{mean:.3f} ± {std:.3f}"


def render_table(record: Mapping[str, Any], metric: str = "DSC") -> str:
    """Markdown table of a quality record: mean ± std of each metric over the outer test folds
    (seeds averaged within a fold) and, per method, the paired difference of ``metric`` to its
    group's baseline with a bootstrap CI and the Holm-corrected Wilcoxon p; a group with one
    method gets the CI of its mean instead. Footnotes say what the numbers are and where they
    were measured."""
    rows = record["rows"]
    groups = _ordered([r["group"] for r in rows])
    compared = any(len(_ordered([r["method"] for r in rows if r["group"] == g])) > 1 for g in groups)
    head = [record.get("group_title", "Model"), record.get("column", "Method"),
            *(f"test {m}" for m in METRIC_NAMES)]
    head += ([f"Δ test {metric} vs baseline [95 % CI]", "p (Holm)"] if compared
             else [f"test {metric} 95 % CI"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n_tests = 0
    for group in groups:
        mine = [r for r in rows if r["group"] == group]
        methods = _ordered([r["method"] for r in mine])
        by_method = {m: [r for r in mine if r["method"] == m] for m in methods}
        comparisons = compare_study({m: _scores(v, metric) for m, v in by_method.items()}, methods[0]) \
            if len(methods) > 1 else {}
        n_tests += sum(c.tested for c in comparisons.values())
        for i, method in enumerate(methods):
            cells = [group if i == 0 else "", method,
                     *(_mean_std_over_folds(by_method[method], m) for m in METRIC_NAMES)]
            if compared:
                c = comparisons.get(method)
                cells += ["(baseline)", ""] if c is None else [format_diff(c), format_p(c)]
            else:
                low, high = hierarchical_bootstrap_ci(_scores(by_method[method], metric))
                cells += [f"[{low:.3f}, {high:.3f}]"]
            lines.append("| " + " | ".join(cells) + " |")
    if not compared:
        lines += ["", _by_fold_line(rows, metric)]
    lines += ["", _evaluation_note(record, metric, compared, n_tests)]
    diverged = [r for r in rows if r.get("diverged")]
    if diverged:
        runs = "; ".join(f"{r['group']} / {r['method']}, seed {r['seed']}, fold {r['fold']}" for r in diverged)
        lines += ["", f"Diverged ({len(diverged)} of {len(rows)} fold runs; the training loss became "
                      f"non-finite, the fold kept its best validation epoch before that and is scored "
                      f"like the others): {runs}."]
    lines += ["", provenance_note(record)]
    return "\n".join(lines) + "\n"


def _by_fold_line(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """'Test DSC by fold (mean of seeds): UNet: fold 0 0.712, fold 1 0.000, ...' per group."""
    parts = []
    for group in _ordered([r["group"] for r in rows]):
        means = fold_means(_scores([r for r in rows if r["group"] == group], metric))
        parts.append(f"{group}: " + ", ".join(f"fold {f} {v:.3f}" for f, v in means.items()))
    return f"Test {metric} by fold (mean of seeds): " + "; ".join(parts) + "."


def _evaluation_note(record: Mapping[str, Any], metric: str, compared: bool, n_tests: int) -> str:
    ev = record.get("evaluation", {})
    rows = record["rows"]
    k = len({int(r["fold"]) for r in rows})
    seeds = len({int(r["seed"]) for r in rows})
    text = (f"Test scores on {record.get('dataset', '?')}: {k} outer test fold(s) of {ev.get('folds', k)}-fold nested "
            f"cross-validation; a fold's test cases are never used for training, early stopping or the "
            f"choice of epoch (validation: {ev.get('val_fraction', '?')} of the fold's other cases). "
            f"Mean ± std over the test folds, each the mean of {seeds} seed(s).")
    if compared:
        min_p = 2.0 / 2 ** k if k else 1.0
        text += (f" Δ: mean paired difference of test {metric} (seeds averaged within a fold) with a "
                 f"hierarchical (fold, seed) bootstrap 95 % CI. p: two-sided exact Wilcoxon signed-rank "
                 f"test over the {k} test folds, Holm-corrected within this table")
        if min_p > ALPHA:
            text += (f"; with {k} test folds no two-sided p can be below {min_p:.3g}, so none can reach "
                     f"{ALPHA} and none is given: the CI is the evidence.")
        else:
            text += f" ({n_tests} tested comparison(s); n/a where a comparison cannot reach {ALPHA})."
    else:
        text += f" CI: hierarchical (fold, seed) bootstrap 95 % CI of the mean test {metric}."
    return text


def provenance_note(record: Mapping[str, Any]) -> str:
    """One line: commit, command, machine, torch, date, CPU and wall time, load."""
    p = record.get("provenance", {})
    machine = p.get("machine", {})
    load = p.get("load_average") or {}
    start, end = load.get("start"), load.get("end")
    load_text = f"load average {start[0]:.1f} → {end[0]:.1f}" if start and end else "load not recorded"
    return (f"Measured at commit `{str(p.get('commit', 'unknown'))[:12]}` with `{p.get('command', '?')}` on "
            f"{machine.get('cpu', '?')} ({machine.get('isa', '?')}, {machine.get('cpus', '?')} CPUs), torch "
            f"{p.get('torch', '?')}, {p.get('date', '?')}; CPU time {_minutes(p.get('cpu_seconds'))}, wall "
            f"time {_minutes(p.get('wall_seconds'))}, {load_text}.")


def _minutes(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    return f"{seconds / 60:.1f} min"


def not_measured(path: str) -> str:
    return f"*Not yet measured on this build (no `{os.path.basename(path)}`).*\n"


def render_file(path: str, metric: str = "DSC") -> str:
    """:func:`render_table` of a results file, or a one-line note when it does not exist yet."""
    if not os.path.isfile(path):
        return not_measured(path)
    return render_table(read_record(path), metric)


def render_time_to_quality(record: Mapping[str, Any], levels: Sequence[float] = (0.3, 0.5, 0.7)) -> str:
    """Table: per schedule, the best mean validation DSC and the training time at which the
    mean validation DSC first reaches each level ("—" if never)."""
    unit = "CPU time" if record.get("clock") == "cpu_seconds" else "wall time"
    head = ["Schedule", "best mean validation DSC", *(f"{unit} to validation DSC ≥ {v:g}" for v in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, curve in record["curves"].items():
        times, dscs = curve["time"], curve["val_dsc"]
        reach = [next((f"{t:.1f} s" for t, d in zip(times, dscs) if d >= v), "—") for v in levels]
        best = max(dscs) if dscs else float("nan")
        lines.append(f"| {label} | {best:.3f} | " + " | ".join(reach) + " |")
    lines += ["", "Validation curves (the early-stopping cases of each fold, mean over folds and seeds): how "
                  "fast a schedule learns, not a test score.", "", provenance_note(record)]
    return "\n".join(lines) + "\n"
