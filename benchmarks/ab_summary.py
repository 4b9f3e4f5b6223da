"""Two builds' headline tables side by side: each build's ``summary_cpu.csv`` runs, alternated
(A B A B …) on one machine, compared row by row.

The ratio rows come first: each is measured within its own run against a provider that both
builds share (``F.cross_entropy``, plain PyTorch modules, MONAI), so the machine's drift
between runs cancels. The table gives, per ratio row, the median over each build's runs and
after / before (above 1: the second build is slower against the same reference). A second
table gives the time rows the same way (median p50 in ms): the shared providers' rows there
show how far the machine itself drifted between the builds' runs.

    python benchmarks/ab_summary.py --out benchmarks/results/restructure_ab.md \\
        before=/tmp/ab/b1/summary_cpu.csv after=/tmp/ab/a1/summary_cpu.csv before=... after=...
"""
from __future__ import annotations

import argparse
import csv
import statistics


def read_rows(path: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """{metric: {op / provider: p50}} of a summary CSV for the metrics "ratio" and "time", and
    its provenance (commit, device, ISA, torch, date)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no rows")
    values = {metric: {f"{r['op']}: {r['provider']}": float(r["p50"]) for r in rows if r["metric"] == metric}
              for metric in ("ratio", "time")}
    first = rows[0]
    return values, {k: first.get(k) or "not recorded" for k in ("commit", "device", "isa", "torch", "timestamp")}


def _median_table(title: str, labels: list[str], runs: dict[str, list[dict[str, float]]]) -> list[str]:
    """Markdown rows: per key present in every run, each label's median and their quotient."""
    a, b = labels
    keys = [k for k in runs[a][0] if all(k in r for runs_ in runs.values() for r in runs_)]
    lines = ["", f"| {title} | {a} (median of {len(runs[a])}) | {b} (median of {len(runs[b])}) | {b} / {a} |",
             "|---|---|---|---|"]
    for k in keys:
        ma = statistics.median(r[k] for r in runs[a])
        mb = statistics.median(r[k] for r in runs[b])
        lines.append(f"| {k} | {ma:.3f} | {mb:.3f} | {mb / ma:.3f} |")
    return lines


def compare(runs: list[tuple[str, str]]) -> str:
    """Markdown: the runs (label, file, provenance), then one line per ratio row."""
    labels = list(dict.fromkeys(label for label, _ in runs))
    if len(labels) != 2:
        raise ValueError(f"expected runs of exactly two builds, got labels {labels}")
    by_metric: dict[str, dict[str, list[dict[str, float]]]] = {
        metric: {label: [] for label in labels} for metric in ("ratio", "time")}
    lines = ["| run | build | commit | device | ISA | torch | date |", "|---|---|---|---|---|---|---|"]
    for i, (label, path) in enumerate(runs):
        values, prov = read_rows(path)
        for metric, by_label in by_metric.items():
            by_label[label].append(values[metric])
        lines.append(f"| {i + 1} | {label} | `{prov['commit'][:12]}` | {prov['device']} | {prov['isa']} | "
                     f"{prov['torch']} | {prov['timestamp']} |")
    lines += _median_table("ratio row", labels, by_metric["ratio"])
    lines += _median_table("time row (ms)", labels, by_metric["time"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--title", default="Headline ratios of two builds, runs alternated on one machine")
    ap.add_argument("--note", default="", help="a line under the title (e.g. which commit each label is)")
    ap.add_argument("runs", nargs="+", metavar="LABEL=CSV", help="a run: its build's label and summary CSV, in run order")
    args = ap.parse_args(argv)
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            ap.error(f"expected LABEL=CSV, got {item!r}")
        runs.append((label, path))
    text = f"# {args.title}\n\n" + (f"{args.note}\n\n" if args.note else "") + compare(runs)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
