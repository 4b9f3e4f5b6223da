"""k-fold cross-validation split by case (never by slice), seeded and saved to JSON."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from unimri._atomic import atomic_write_text


def kfold_split(case_ids: Sequence[str], k: int = 5, seed: int = 0, path: str | None = None,
                groups: Mapping[str, str] | Sequence[str] | None = None
                ) -> list[tuple[list[str], list[str]]]:
    """Split cases into ``k`` folds; every case is in exactly one validation fold.

    Splitting is by case id (all slices of a case stay on one side). With ``groups``
    (one group name per case id, e.g. the patient of each image, or a mapping
    id -> group) whole groups are assigned to folds, so images of one patient never
    leak between training and validation. Groups are shuffled with ``seed`` and
    dealt largest-first to the currently smallest fold, so fold sizes stay balanced.

    If ``path`` is given, the split is written there as JSON ({"k", "seed", "folds":
    [{"train": [...], "val": [...]}]}) atomically. If that file already exists and holds
    a split of the same case ids with the same k, that saved split is returned unchanged
    (runs stay comparable); a saved split of other cases raises ValueError.

    Returns:
        list of k (train_ids, val_ids) pairs, ids in the input order.
    """
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"case_ids must be unique, got duplicates {dupes[:5]}")
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if groups is None:
        group_of = {c: c for c in ids}
    elif isinstance(groups, Mapping):
        missing = [c for c in ids if c not in groups]
        if missing:
            raise ValueError(f"groups has no entry for case ids {missing[:5]}")
        group_of = {c: str(groups[c]) for c in ids}
    else:
        if len(groups) != len(ids):
            raise ValueError(f"groups must give one group per case id ({len(ids)}), got {len(groups)}")
        group_of = {c: str(g) for c, g in zip(ids, groups)}
    names = sorted(set(group_of.values()))
    if len(names) < k:
        raise ValueError(f"k={k} folds need at least k cases (or groups), got {len(names)}")

    if path is not None and os.path.exists(path):
        return _load_matching(path, ids, k)

    members: dict[str, list[str]] = {g: [] for g in names}
    for c in ids:
        members[group_of[c]].append(c)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    shuffled.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
    fold_of: dict[str, int] = {}
    sizes = [0] * k
    for i, g in enumerate(shuffled):
        fold = i if i < k else int(np.argmin(sizes))
        sizes[fold] += len(members[g])
        for c in members[g]:
            fold_of[c] = fold
    folds = [([c for c in ids if fold_of[c] != f], [c for c in ids if fold_of[c] == f]) for f in range(k)]
    if path is not None:
        payload = {"k": k, "seed": seed, "folds": [{"train": t, "val": v} for t, v in folds]}
        atomic_write_text(path, json.dumps(payload, indent=1))
    return folds


def load_split(path: str) -> list[tuple[list[str], list[str]]]:
    """Read a split written by :func:`kfold_split`."""
    try:
        with open(path) as fh:
            payload = json.load(fh)
        return [(list(f["train"]), list(f["val"])) for f in payload["folds"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable k-fold split file ({exc})") from exc


def _load_matching(path: str, ids: list[str], k: int) -> list[tuple[list[str], list[str]]]:
    folds = load_split(path)
    saved = sorted(c for _, val in folds for c in val)
    if len(folds) != k or saved != sorted(ids):
        raise ValueError(f"{path}: saved split has {len(folds)} folds over {len(saved)} cases, which "
                         f"does not match k={k} over the {len(ids)} given case ids; delete the file "
                         f"or pass another path")
    order = {c: i for i, c in enumerate(ids)}
    return [(sorted(t, key=order.__getitem__), sorted(v, key=order.__getitem__)) for t, v in folds]
