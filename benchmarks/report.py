"""Regenerate the tables of README.md and docs/*.md from the committed results files.

A generated table lives between two markers in a markdown file::

    <!-- BEGIN generated: NAME -->
    ...
    <!-- END generated: NAME -->

``python benchmarks/report.py`` rewrites every marked block whose NAME has a generator;
``--check`` rewrites nothing and exits 1 listing the blocks that differ from what the
generators produce (tests/test_docs_generated.py runs it). ``--only NAME[,NAME...]``
limits either mode to some blocks; ``--quality`` to the quality tables. A block whose
NAME has no generator is left as it is and reported on stderr ("no generator"); it does
not fail ``--check``.

Performance tables are built here from ``benchmarks/results/*.csv`` (and the ``.md`` file
written beside each, which records the load average). Each table states its results file
and the provenance that file records: commit, command, machine (CPU model, ISA), load,
torch version and date. A field the file does not record is named as missing, never
filled in by hand. Quality tables come from ``benchmarks/report_quality.py`` when that
module exists: its ``TABLES`` dict (name -> callable returning markdown) is merged in.

Only the standard library is used, so the check runs in well under a second.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import sys
from typing import Callable, Dict, Iterable, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN generated: (?P<name>[A-Za-z0-9_.-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END generated: (?P=name) -->)",
    re.S,
)

QUALITY_NAMES = (
    "quality-demo",
    "quality-components-phantom",
    "quality-components-colin27",
    "quality-loss",
    "quality-attention",
    "quality-peer-monai",
    "quality-colin27-loso",
)


# ----------------------------------------------------------------------------- reading files

class Results:
    """One results CSV (plus its .md) and the provenance it records."""

    def __init__(self, stem: str):
        self.stem = stem
        self.csv_path = os.path.join(RESULTS, stem + ".csv")
        with open(self.csv_path, newline="", encoding="utf-8") as fh:
            self.rows: List[dict] = list(csv.DictReader(fh))
        md = os.path.join(RESULTS, stem + ".md")
        self.md_text = ""
        if os.path.exists(md):
            with open(md, encoding="utf-8") as fh:
                self.md_text = fh.read()

    # -- lookup
    def value(self, **match) -> float:
        found = self.find(**match)
        if found is None:
            raise KeyError(f"{self.stem}.csv has no row with {match}")
        return found

    def find(self, **match) -> Optional[float]:
        for row in self.rows:
            if all(row.get(k) == v for k, v in match.items()):
                return float(row["p50"])
        return None

    def row(self, **match) -> dict:
        for row in self.rows:
            if all(row.get(k) == v for k, v in match.items()):
                return row
        raise KeyError(f"{self.stem}.csv has no row with {match}")

    def distinct(self, column: str) -> List[str]:
        seen: List[str] = []
        for row in self.rows:
            v = row.get(column, "")
            if v and v not in seen:
                seen.append(v)
        return seen

    # -- provenance
    def _field(self, column: str) -> Optional[str]:
        values = self.distinct(column)
        if not values:
            return None
        return values[0] if len(values) == 1 else " / ".join(values)

    def load(self) -> Optional[str]:
        parts = []
        m = re.search(r"load average ([\d.]+) before and ([\d.]+) after", self.md_text)
        cores = re.search(r"Machine: (\d+) cores", self.md_text)
        on = f" on {cores.group(1)} cores" if cores else ""
        if m:
            parts.append(f"1-min load average {m.group(1)} before, {m.group(2)} after the run{on}")
        loads = sorted({float(x) for r in self.rows for x in re.findall(r"load ([\d.]+) on", r.get("note", ""))})
        if loads:
            lo, hi = loads[0], loads[-1]
            parts.append("load noted with the rows " + f"{lo:g}" + (f"–{hi:g}" if hi != lo else ""))
        return "; ".join(parts) or None

    def dates(self) -> Optional[str]:
        stamps = sorted({r["timestamp"][:10] for r in self.rows if r.get("timestamp")})
        if not stamps:
            return None
        return stamps[0] if len(stamps) == 1 else f"{stamps[0]} – {stamps[-1]}"

    def provenance(self) -> str:
        parts = []
        missing = []
        for key, label in (("commit", "commit"), ("command", "command")):
            v = self._field(key)
            if v:
                parts.append(f"{label} `{v}`" if key == "command" else f"{label} {v}")
            else:
                missing.append(label)
        device = self._field("device")
        if device:
            parts.append(device)
        else:
            missing.append("machine")
        isa = self._field("isa")
        if isa:
            parts.append(f"ISA {isa}")
        else:
            m = re.search(r"ATen CPU capability (\w+)", self.md_text)
            if m:
                parts.append(f"ATen CPU capability {m.group(1)} (CPU flags not recorded)")
            else:
                missing.append("ISA")
        variant = self._field("kernel_variant")
        if variant:
            parts.append(f"unimri kernels {variant}")
        elif device and device.startswith("CPU"):
            missing.append("kernel variant")
        load = self.load()
        if load:
            parts.append(load)
        else:
            missing.append("load")
        torch_v = self._field("torch")
        if torch_v:
            parts.append(f"torch {torch_v}")
        else:
            missing.append("torch version")
        date = self.dates()
        if date:
            parts.append(date)
        else:
            missing.append("date")
        if "mmap threshold fixed" in self.md_text:
            parts.append("glibc mmap threshold fixed at 128 KiB")
        elif "malloc defaults" in self.md_text:
            parts.append("glibc malloc defaults")
        text = f"Source: `benchmarks/results/{self.stem}.csv` — " + "; ".join(parts) + "."
        if missing:
            text += " Not recorded in the file: " + ", ".join(missing) + "."
        return text


_cache: Dict[str, Results] = {}


def results(stem: str) -> Results:
    if stem not in _cache:
        _cache[stem] = Results(stem)
    return _cache[stem]


# ----------------------------------------------------------------------------- formatting

def fmt(x: float, digits: int = 3) -> str:
    """Three significant digits, no exponent for the magnitudes these tables hold."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


def times(x: float) -> str:
    return fmt(x) + "×"


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def section(*parts: str) -> str:
    """Table, notes and provenance lines as one markdown block, a blank line between parts."""
    return "\n\n".join(parts)


def describe_size(size: str) -> str:
    """"2d b8 1x128x128 width 16" -> "2D, batch 8 × 1×128×128, width 16" (as the file says)."""
    m = re.match(r"(\d)d b(\d+) ([\dx]+)(?: width (\d+))?$", size.strip())
    if not m:
        return size
    text = f"{m.group(1)}D, batch {m.group(2)} × {m.group(3).replace('x', '×')}"
    return text + (f", width {m.group(4)}" if m.group(4) else "")


def target_of(note: str) -> Optional[Tuple[str, float]]:
    m = re.search(r"target (<=|>=) ([\d.]+)", note)
    return (m.group(1), float(m.group(2))) if m else None


def verdict(value: float, target: Optional[Tuple[str, float]]) -> str:
    if target is None:
        return "—"
    op, bound = target
    met = value <= bound if op == "<=" else value >= bound
    sign = "≤" if op == "<=" else "≥"
    return f"{sign} {bound:g} " + ("✓" if met else "✗ (not met)")


# ----------------------------------------------------------------------------- performance tables

SUMMARY_ROWS = [
    # (label, provider of the ratio row); {size} is the row's size as the file records it
    ("`UnifiedFocalLoss()` fwd+bwd, logits {size}: time / `F.cross_entropy`",
     "UnifiedFocalLoss / cross-entropy"),
    ("same loss: speed-up over the loss written in plain PyTorch",
     "plain PyTorch / UnifiedFocalLoss"),
    ("`AttentionGate` fwd+bwd, {size}: speed-up over Oktay's block in plain PyTorch modules "
     "(output conv + BN included)",
     "Oktay eager / unimri"),
    ("UNet + SAS step / unimri UNet step without attention, fp32", "UNet+SAS / UNet (fp32)"),
    ("UNet + SAS step / unimri UNet step without attention, bf16 autocast", "UNet+SAS / UNet (bf16)"),
    ("UNet + SAS step / MONAI `AttentionUnet` step, fp32", "UNet+SAS / MONAI AttentionUnet (fp32)"),
    ("UNet + SAS step / MONAI `AttentionUnet` step, bf16 autocast", "UNet+SAS / MONAI AttentionUnet (bf16)"),
    ("unimri UNet step, bf16 autocast / fp32", "UNet bf16 / fp32"),
    ("UNet + SAS step, bf16 autocast / fp32", "UNet+SAS bf16 / fp32"),
    ("UNet + SAS in plain PyTorch modules / unimri UNet + SAS, fp32 (speed-up of the fused ops)",
     "plain PyTorch UNet+SAS / unimri (fp32)"),
]


def perf_headline() -> str:
    r = results("summary_cpu")
    rows = []
    for label, provider in SUMMARY_ROWS:
        row = r.row(provider=provider, metric="ratio")
        value = float(row["p50"])
        size = row["size"].replace(",", ", ").replace(") g(", "), g (").replace("x(", "x (")
        rows.append([label.format(size=size.replace("x", "×") if "(" not in size else size),
                     fmt(value), verdict(value, target_of(row["note"]))])
    size = r.row(op="train step", metric="time")["size"]
    width = re.search(r"width (\d+)", size)
    monai = (f"; MONAI's `UNet` and `AttentionUnet` with channels {width.group(1)}…"
             f"{16 * int(width.group(1))}, strides 2" if width else "")
    return section(
        table(["what", "ratio (one run)", "target"], rows),
        f"Training steps: {describe_size(size)}, SGD, unified loss{monai}. \"A / B\": a ratio of "
        "times, below 1 when A is faster; \"speed-up\": above 1 when unimri is faster. All rows were measured side by side in one run (blocks "
        "of calls interleaved, medians); ✓ means this one run meets the target, it is not a "
        "range over runs.",
        r.provenance(),
    )


def perf_summary_times() -> str:
    r = results("summary_cpu")
    rows = []
    for row in r.rows:
        if row["metric"] != "time":
            continue
        rows.append([row["op"], row["provider"], fmt(float(row["p50"])) + " " + row["unit"]])
    return section(
        table(["benchmark", "provider", "median time"], rows),
        "Absolute times hold for this machine and this run only; compare rows within the table.",
        r.provenance(),
    )


TRAIN_PROVIDERS = [
    ("plain PyTorch modules¹", "eager PyTorch modules (Oktay block + plain loss) vs default"),
    ("`--channels-last`", "unimri + channels-last vs default"),
    ("`--amp bf16`", "unimri + bf16 autocast vs default"),
    ("`--amp bf16 --channels-last`", "unimri + bf16 + channels-last vs default"),
]
BACKBONE_LABELS = {"unet": "UNet", "fcn": "FCN", "rcnn": "RCNN (R2U-Net)", "segnet": "SegNet",
                   "deeplabv3": "DeepLabV3"}


def perf_train_options() -> str:
    runs = [results("train_cpu"), results("train_cpu_run2")]
    rows = []
    for op in runs[0].distinct("op"):
        cells = [BACKBONE_LABELS.get(op.split("+")[0], op) + (" + SAS" if op.endswith("+sas") else "")]
        for _, provider in TRAIN_PROVIDERS:
            vals = [run.find(op=op, provider=provider, metric="speedup") for run in runs]
            cells.append(" / ".join(fmt(v) for v in vals))
        rows.append(cells)
    size = runs[0].rows[0]["size"]
    return section(
        table(["backbone"] + [label for label, _ in TRAIN_PROVIDERS], rows),
        f"One SGD step with the unified loss, {describe_size(size)}; "
        "each cell is default time / option's time (> 1 is faster), \"run 1 / run 2\" from two "
        "runs in a row. Default = fused ops, eager, fp32, contiguous (NCHW). ¹ The same network "
        "with Oktay's attention block, the plain loss, and batch norm + ReLU, pooling and the "
        "1×1 head as PyTorch modules (< 1: slower than unimri).",
        "Run 1: " + runs[0].provenance(),
        "Run 2: " + runs[1].provenance(),
    )


def perf_compile() -> str:
    r = results("train_cpu_quick_compile_unet")
    first = r.row(metric="compile_time")
    speed = r.value(provider="unimri + compile vs default", metric="speedup")
    size = describe_size(first["size"])
    return section(
        table(["UNet + SAS, " + size, "value"], [
            ["first step, including inductor compiling forward and backward", fmt(float(first["p50"])) + " s"],
            ["`--compile` speed-up: eager default step time / compiled step time (> 1: compiled is faster)", fmt(speed)],
        ]),
        "Measured while other jobs loaded the 2-core machine (load below); neither number has "
        "been measured on an idle machine.",
        r.provenance(),
    )


def perf_loss() -> str:
    r = results("loss_cpu")
    rows = []
    for size in r.distinct("size"):
        get = lambda p: r.value(provider=p, mode="forward+backward", metric="ratio", size=size)  # noqa: E731
        shape, _, dtype = size.partition(" ")
        rows.append([shape.replace("x", "×"), dtype or "float32",
                     times(get("eager_reference")), times(get("compile_reference")),
                     times(get("monai")), fmt(1.0 / get("torch_ce")),
                     fmt(r.value(provider="unimri", mode="forward+backward", metric="time", size=size)) + " ms"])
    return section(
        table(["logits", "dtype", "vs eager reference", "vs `torch.compile`(reference)",
               "vs MONAI `AsymmetricUnifiedFocalLoss`", "unimri / `F.cross_entropy`",
               "unimri fwd+bwd"], rows),
        "Forward + backward; speed-ups are provider time / unimri time, measured side by side "
        "(blocks interleaved, medians). Integer labels. A size without a dtype in the file is "
        "float32, `bench_loss.py`'s default.",
        r.provenance(),
    )


def perf_attention() -> str:
    r = results("attention_cpu")
    rows = []
    for size in r.distinct("size"):
        get = lambda p: r.value(provider=p, mode="forward+backward", metric="ratio", size=size)  # noqa: E731
        label = size.replace(",", ", ").replace(")g(", "), g (").replace("x(", "x (")
        rows.append([label,
                     fmt(r.value(provider="unimri fused (cpp)", mode="forward+backward", metric="time", size=size)) + " ms",
                     times(get("eager reference")), times(get("torch.compile(reference)")),
                     times(get("MONAI AttentionBlock (full-res gating)"))])
    return section(
        table(["x / g", "fused fwd+bwd", "vs eager reference", "vs `torch.compile`(reference)",
               "vs MONAI `AttentionBlock`¹"], rows),
        "The fused op alone (α ⊙ x, no output convolution). ¹ MONAI's block gates at full "
        "resolution and has batch norm: not the same computation. The whole Oktay block with "
        "its output conv + BN is the headline table's gate row.",
        r.provenance(),
    )


def perf_loader() -> str:
    r = results("loader_cpu")
    rows = [["read 8 `.nii.gz` volumes (`load_cases`)",
             fmt(r.value(op="read_nifti_folder", metric="throughput")) + " volumes/s", "—"]]
    for provider in r.distinct("provider"):
        if not provider.startswith("workers"):
            continue
        plain = r.find(op="slice_loader", provider=provider, mode="plain", metric="throughput")
        aug = r.find(op="slice_loader", provider=provider, mode="augment", metric="throughput")
        rows.append([f"slice loader, {provider}", fmt(plain) + " slices/s", fmt(aug) + " slices/s"])
    size = r.row(op="slice_loader", metric="throughput")["size"]
    return section(
        table(["what", "plain", "with augmentation"], rows),
        f"Volumes {size.replace('x', '×')}, batch 32, 2 torch threads. Non-persistent workers "
        "include their start-up.",
        r.provenance(),
    )


MODEL_ORDER = ["unet", "fcn", "rcnn", "segnet", "deeplabv3"]


def perf_models() -> str:
    r2, r3 = results("models_cpu_2d"), results("models_cpu_3d")
    rows = []
    for m in MODEL_ORDER:
        cells = [BACKBONE_LABELS[m]]
        for r in (r2, r3):
            for op in (m, m + "+sas"):
                cells.append(fmt(r.value(op=op, provider="fused/eager", metric="speedup")))
        rows.append(cells)
    mem_rows = []
    for m in MODEL_ORDER:
        cells = [BACKBONE_LABELS[m] + " + SAS"]
        for r in (r2, r3):
            fused = r.value(op=m + "+sas", provider="fused", metric="saved_activations")
            eager = r.value(op=m + "+sas", provider="eager", metric="saved_activations")
            cells.append(f"{fused:.0f} / {eager:.0f}")
        mem_rows.append(cells)
    monai = []
    for r in (r2, r3):
        v = r.find(op="monai_attention_unet", metric="saved_activations")
        monai.append(f"{v:.0f}" if v is not None else "—")
    mem_rows.append(["MONAI `AttentionUnet`"] + monai)
    s2 = describe_size(r2.rows[0]["size"] + " width 16").replace(", width 16", "")
    s3 = describe_size(r3.rows[0]["size"] + " width 16").replace(", width 16", "")
    return section(
        table(["backbone", "2D", "2D + SAS", "3D", "3D + SAS"], rows),
        "Step-time speed-up of the fused ops over the same network in plain PyTorch modules "
        f"(Oktay's block, plain loss, batch norm + ReLU, pooling and 1×1 head as modules); one "
        f"SGD step, {s2} and {s3}, width 16 (the files' `features=16`), one run per file. This benchmark fixes glibc's "
        "mmap threshold for its peak-memory rows, so its step times run slower than in "
        "training and lean towards the provider that allocates less.",
        table(["saved activations, MiB (fused / plain)", "2D", "3D"], mem_rows),
        "2D: " + r2.provenance(),
        "3D: " + r3.provenance(),
    )


def triton_compile() -> str:
    path = os.path.join(RESULTS, "triton_compile.json")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    res = data["results"]
    failed = sum(1 for x in res if x.get("error"))
    spills = sum(1 for x in res if x.get("n_spills"))
    per: Dict[Tuple[str, int], List[dict]] = {}
    for x in res:
        per.setdefault((x["kernel"], x["arch"]), []).append(x)
    rows = []
    for (kernel, arch), xs in sorted(per.items()):
        rows.append([f"`{kernel}`", f"sm_{arch}", str(len(xs)), str(max(x["n_regs"] for x in xs)),
                     str(max(x["n_spills"] for x in xs)), str(max(x["shared"] for x in xs))])
    md_path = os.path.join(RESULTS, "triton_compile.md")
    header = ""
    if os.path.exists(md_path):
        with open(md_path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Generated "):
                    header = line.strip()
                    break
    prov = f"Source: `benchmarks/results/triton_compile.json` ({len(res)} compilations"
    prov += f", {failed} failed, {spills} with register spills)"
    prov += (". Its report `triton_compile.md` says: " + header) if header else "."
    prov += " Not recorded in the file: commit."
    return section(
        table(["kernel", "arch", "configs", "max registers", "max spills", "max shared memory (B)"], rows),
        "Ahead-of-time compilation of every launch configuration the CUDA launchers choose, with "
        "Triton's bundled ptxas, on a machine without a GPU. It shows that the kernels compile "
        "within each architecture's limits; it measures no speed.",
        prov,
    )


TABLES: Dict[str, Callable[[], str]] = {
    "perf-headline": perf_headline,
    "perf-summary-times": perf_summary_times,
    "perf-train-options": perf_train_options,
    "perf-compile": perf_compile,
    "perf-loss": perf_loss,
    "perf-attention": perf_attention,
    "perf-loader": perf_loader,
    "perf-models": perf_models,
    "triton-compile": triton_compile,
}


def _quality_tables() -> Dict[str, Callable[[], str]]:
    path = os.path.join(ROOT, "benchmarks", "report_quality.py")
    if not os.path.exists(path):
        return {}
    spec = importlib.util.spec_from_file_location("unimri_report_quality", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    here = os.path.dirname(path)
    sys.path.insert(0, here)  # so that it can import its neighbours in benchmarks/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(here)
    return dict(getattr(module, "TABLES", {}))


# ----------------------------------------------------------------------------- the markdown files

def doc_files() -> List[str]:
    files = [os.path.join(ROOT, "README.md")]
    docs = os.path.join(ROOT, "docs")
    if os.path.isdir(docs):
        files += sorted(os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))
    return [f for f in files if os.path.exists(f)]


def render(text: str, tables: Dict[str, Callable[[], str]], only: Optional[set],
           rel: str, missing: List[str], outputs: Dict[str, str]) -> Tuple[str, List[str]]:
    changed: List[str] = []

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if only is not None and name not in only:
            return m.group(0)
        if name not in tables:
            missing.append(f"{rel}: {name}")
            return m.group(0)
        if name not in outputs:
            outputs[name] = tables[name]().strip("\n") + "\n"
        body = outputs[name]
        if body != m.group("body"):
            changed.append(f"{rel}: {name}")
        return m.group("begin") + body + m.group("end")

    return BLOCK.sub(sub, text), changed


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block differs")
    ap.add_argument("--only", help="comma-separated block names")
    ap.add_argument("--quality", action="store_true", help="only the quality tables")
    ap.add_argument("--list", action="store_true", help="list generators and blocks, then exit")
    args = ap.parse_args(argv)

    tables = dict(TABLES)
    tables.update(_quality_tables())
    only: Optional[set] = None
    if args.only:
        only = {n.strip() for n in args.only.split(",") if n.strip()}
    if args.quality:
        only = (only or set()) | set(QUALITY_NAMES) | {n for n in tables if n.startswith("quality-")}

    differ: List[str] = []
    missing: List[str] = []
    outputs: Dict[str, str] = {}
    for path in doc_files():
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if args.list:
            for m in BLOCK.finditer(text):
                name = m.group("name")
                print(f"{rel}: {name}" + ("" if name in tables else "  (no generator)"))
            continue
        new, changed = render(text, tables, only, rel, missing, outputs)
        differ += changed
        if changed and not args.check:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(new)
    if args.list:
        return 0
    for item in missing:
        print(f"no generator: {item} (left as it is)", file=sys.stderr)
    if args.check:
        if differ:
            print("generated blocks differ from benchmarks/report.py's output "
                  "(run `python benchmarks/report.py`):", file=sys.stderr)
            for item in differ:
                print(f"  {item}", file=sys.stderr)
            return 1
        print(f"report: {len(outputs)} generated block(s) up to date")
        return 0
    for item in differ:
        print(f"rewrote {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
