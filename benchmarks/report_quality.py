"""The quality tables of README.md and docs/*.md, rendered from committed results files.

``benchmarks/report.py`` merges :data:`TABLES` (block name -> callable returning markdown)
into its generators. Every table comes from a quality results file under
``benchmarks/results/quality/`` (nested cross-validation test scores with their
provenance: :mod:`unimri.studies.quality`), rendered by the same function that prints the
tables of ``unimri demo`` and ``unimri ablate``. A table whose file is not there yet says
so in one line; nothing is carried over from older runs.

Which run writes which file (``<out>`` is the command's ``--out``; see docs/evaluation.md):

========================================  =============================================================
``quality/demo.json``                     ``unimri demo``: ``<out>/demo_results.json``
``quality/components_<dataset>.json``     ``unimri ablate --study components|all --peer monai``: ``components_results.json``
``quality/loss_<dataset>.json``           ``--study loss|all``: ``loss_results.json``
``quality/attention_<dataset>.json``      ``--study attention|all``: ``attention_results.json``
``quality/colin27_loso_w<width>.json``    ``python -m unimri.studies.collect`` over the ``unimri train`` seeds
``quality/imbalance.json``                ``--study imbalance``: ``imbalance_results.json``
``quality/time_to_quality.json``          ``time_to_quality_report(..., name="time_to_quality")``
``quality/backbones_<dataset>.json``      ``--study backbones`` (2D, five backbones): ``backbones_results.json``
``quality/lambda_<dataset>.json``         ``--study lambda``: ``lambda_results.json``
``quality/backbones3d_<dataset>.json``    ``--study backbones --models unet --spatial-dims 3``: ``backbones_results.json``
``nnunet_curve.{md,csv,png}``             ``benchmarks/nnunet_curve.py`` in the nnU-Net environment (docs/nnunet.md)
========================================  =============================================================
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))  # a clean checkout without an installed unimri

from unimri.studies.quality import (not_measured, read_record, render_file, render_table,  # noqa: E402
                                    render_time_to_quality, TTQ_FORMAT)

QUALITY = os.path.join(ROOT, "benchmarks", "results", "quality")
DATASET_TITLES = {"phantom": "Phantom", "colin27": "Colin27 hippocampus"}
PEER_ROWS = ("all (unified approach)", "MONAI UNet + DiceCE + Adam")


def _path(name: str) -> str:
    return os.path.join(QUALITY, name)


def _per_dataset(stem: str) -> Callable[[], str]:
    """One table per dataset that has a results file, each under a bold heading."""
    def table() -> str:
        parts = []
        for key, title in DATASET_TITLES.items():
            path = _path(f"{stem}_{key}.json")
            parts.append(f"**{title}**\n\n" + render_file(path))
        return "\n".join(parts)
    return table


def _one(name: str) -> Callable[[], str]:
    return lambda: render_file(_path(name))


def _rows_of(record: dict, methods: Sequence[str]) -> dict:
    """``record`` with only ``methods`` (in that order: the first is the baseline)."""
    rows = [r for m in methods for r in record["rows"] if r["method"] == m]
    return {**record, "rows": rows}


def peer_monai() -> str:
    """The unified approach against the MONAI peer on the same test folds and training time."""
    parts = []
    for key, title in DATASET_TITLES.items():
        path = _path(f"components_{key}.json")
        if not os.path.isfile(path):
            parts.append(f"**{title}**\n\n" + not_measured(path))
            continue
        record = _rows_of(read_record(path), PEER_ROWS)
        if not {r["method"] for r in record["rows"]} >= set(PEER_ROWS):
            parts.append(f"**{title}**\n\n*Not yet measured on this build (`{os.path.basename(path)}` has no "
                         f"MONAI peer rows: run the study with `--peer monai`).*\n")
            continue
        parts.append(f"**{title}**\n\n" + render_table(record))
    return "\n".join(parts)


def colin27_loso() -> str:
    parts = [f"**UNet width {w}**\n\n" + render_file(_path(f"colin27_loso_w{w}.json")) for w in (8, 16)]
    return "\n".join(parts)


def time_to_quality() -> str:
    path = _path("time_to_quality.json")
    if not os.path.isfile(path):
        return not_measured(path)
    return render_time_to_quality(read_record(path, TTQ_FORMAT))


def _titled(files: Sequence[tuple[str, str]]) -> Callable[[], str]:
    """One table per (results file, heading)."""
    def table() -> str:
        return "\n".join(f"**{title}**\n\n" + render_file(_path(name)) for name, title in files)
    return table


#: the nnU-Net peer curve's reports (benchmarks/nnunet_curve.py) in the order they were run
NNUNET_CURVES = (("nnunet_curve.md", ""),
                 ("nnunet_curve_unimri_long.md", "**Longer budgets of unimri's pipeline** (a second run on the same "
                                                 "folds, made after the first to extend its series; both are "
                                                 "listed)"))


def nnunet_curve() -> str:
    """The nnU-Net peer curve's reports, as the runs wrote them (their title lines dropped)."""
    first = os.path.join(ROOT, "benchmarks", "results", NNUNET_CURVES[0][0])
    if not os.path.isfile(first):
        return not_measured(first)
    parts = []
    for name, heading in NNUNET_CURVES:
        path = os.path.join(ROOT, "benchmarks", "results", name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            body = "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()
            parts.append(f"{heading}\n\n{body}" if heading else body)
    return "\n\n".join(parts) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "quality-nnunet-curve": nnunet_curve,
    "quality-backbones": _per_dataset("backbones"),
    "quality-lambda": _per_dataset("lambda"),
    "quality-3d": _titled([("backbones3d_phantom.json", "3D phantom, 3D UNet"),
                           ("backbones3d_colin27.json", "Colin27 hippocampus, 3D UNet (1 mm slabs)")]),
    "quality-demo": _one("demo.json"),
    "quality-components-phantom": _one("components_phantom.json"),
    "quality-components-colin27": _one("components_colin27.json"),
    "quality-loss": _per_dataset("loss"),
    "quality-attention": _per_dataset("attention"),
    "quality-peer-monai": peer_monai,
    "quality-colin27-loso": colin27_loso,
    "quality-imbalance": _one("imbalance.json"),
    "quality-time-to-quality": time_to_quality,
}
