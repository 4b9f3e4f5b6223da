"""BraTS 2015 training data (glioma MR, four modalities), as published::

    BRATS2015_Training/
      HGG/brats_2013_pat0001_1/
        VSD.Brain.XX.O.MR_Flair.54512/VSD.Brain.XX.O.MR_Flair.54512.mha
        VSD.Brain.XX.O.MR_T1.54513/VSD.Brain.XX.O.MR_T1.54513.mha
        VSD.Brain.XX.O.MR_T1c.54514/VSD.Brain.XX.O.MR_T1c.54514.mha
        VSD.Brain.XX.O.MR_T2.54515/VSD.Brain.XX.O.MR_T2.54515.mha
        VSD.Brain_3more.XX.O.OT.54517/VSD.Brain_3more.XX.O.OT.54517.mha
      LGG/...

Channels in ``modalities`` order (default T1, T1c, T2, Flair). Labels (OT): 0 background,
1 necrosis, 2 oedema, 3 non-enhancing tumour, 4 enhancing tumour. ``target``: "all"
(five classes), "whole" (1-4), "core" (1, 3, 4) or "enhancing" (4) as binary labels.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..registry import register_layout
from ..volume import Volume
from .common import find_files, non_empty, volume_case

MODALITIES = ("T1", "T1c", "T2", "Flair")
TARGETS = {"all": None, "whole": (1, 2, 3, 4), "core": (1, 3, 4), "enhancing": (4,)}
_MODALITY = re.compile(r"\.MR_(T1c|T1|T2|Flair)\.", re.IGNORECASE)
_LABEL = re.compile(r"\.OT\.", re.IGNORECASE)


def _detect(folder: str) -> bool:
    return any(_LABEL.search(os.path.basename(p)) or _MODALITY.search(os.path.basename(p))
               for p in find_files(folder, (".mha",)))


@register_layout("brats2015", "BraTS 2015: HGG|LGG/<case>/VSD.Brain.*.MR_<modality>.*.mha + *.OT.*.mha",
                 _detect)
def load_brats2015(folder: str, modalities: tuple[str, ...] = MODALITIES, target: str = "all") -> list[Volume]:
    """Load BraTS 2015 cases (needs SimpleITK for .mha)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    wanted = {m.lower(): m for m in MODALITIES}
    for m in modalities:
        if m.lower() not in wanted:
            raise ValueError(f"modalities must be drawn from {MODALITIES}, got {m!r}")
    by_case: dict[str, dict[str, str]] = {}
    for path in find_files(folder, (".mha",)):
        name = os.path.basename(path)
        case_dir = os.path.dirname(os.path.dirname(path))  # <case>/<series folder>/<file>.mha
        if (m := _MODALITY.search(name)):
            by_case.setdefault(case_dir, {})[m.group(1).lower()] = path
        elif _LABEL.search(name):
            by_case.setdefault(case_dir, {})["ot"] = path
    non_empty(folder, by_case, "BraTS 2015 .mha files")
    cases = []
    for case_dir in sorted(by_case):
        files = by_case[case_dir]
        missing = [m for m in modalities if m.lower() not in files] + ([] if "ot" in files else ["OT label"])
        if missing:
            raise ValueError(f"BraTS case folder {case_dir!r} lacks {missing}")
        grade = os.path.basename(os.path.dirname(case_dir))
        classes = ["background", "necrosis", "oedema", "non-enhancing", "enhancing"]
        meta = {"dataset": "brats2015", "layout": "brats2015", "modality": "MR", "grade": grade,
                "channels": list(modalities), "classes": classes}
        case = volume_case([files[m.lower()] for m in modalities], files["ot"],
                           os.path.basename(case_dir), 5, meta)
        if TARGETS[target] is not None:
            case.label = np.isin(case.label, TARGETS[target]).astype(np.int64)
            case.meta["classes"] = ["background", target]
        cases.append(case)
    return cases
