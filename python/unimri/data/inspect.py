"""``unimri datasets PATH``: one row per case of a folder (or built-in dataset) as a table."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .io import count_nonfinite
from .volume import Volume

COLUMNS = ("case", "shape", "spacing", "channels", "classes", "foreground", "non-finite")


def case_row(case: Volume) -> dict[str, Any]:
    """What a user checks first about one case: geometry, channels, classes, foreground, NaN/inf.

    ``foreground`` is the fraction of labelled voxels that are not background (NaN without
    a label); ``nonfinite`` counts NaN/inf image voxels over all channels.
    """
    classes = None if case.label is None else [int(v) for v in np.unique(case.label)]
    return {"case_id": case.case_id, "shape": list(case.spatial_shape),
            "spacing": [round(float(s), 4) for s in case.spacing], "channels": case.num_channels,
            "classes": classes, "foreground": case.foreground_fraction(),
            "nonfinite": count_nonfinite(case.image), "orientation": case.meta.get("orientation")}


def case_table(cases: Sequence[Volume], title: str | None = None) -> str:
    """Markdown table of :func:`case_row` for every case (one line per case)."""
    lines = [f"{title}\n" if title else ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|---" * len(COLUMNS) + "|")
    for case in cases:
        row = case_row(case)
        fg = row["foreground"]
        cells = [row["case_id"], "x".join(map(str, row["shape"])),
                 "x".join(f"{s:g}" for s in row["spacing"]), str(row["channels"]),
                 "none" if row["classes"] is None else ",".join(map(str, row["classes"])),
                 "-" if np.isnan(fg) else f"{100 * fg:.3f} %", str(row["nonfinite"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line) + "\n"
