"""k-fold cross-validation splits by case or group (never by slice), seeded and saved to JSON.

:func:`kfold_split` gives (train, val) folds. :func:`nested_kfold_split` gives the nested
form every reported score uses: each outer fold's ``test`` cases are held out, and a
``val`` subset carved from that fold's other cases (whole groups) drives early stopping
and best-epoch choice, so nothing about a test case reaches training or model selection.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from unimri._atomic import atomic_write_text, read_json_object


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
    ids, group_of = _check_ids_and_groups(case_ids, k, groups)
    if path is not None and os.path.exists(path):
        return _load_matching(path, ids, k)

    fold_of = _assign_folds(ids, group_of, k, seed)
    folds = [([c for c in ids if fold_of[c] != f], [c for c in ids if fold_of[c] == f]) for f in range(k)]
    if path is not None:
        payload = {"k": k, "seed": seed, "folds": [{"train": t, "val": v} for t, v in folds]}
        atomic_write_text(path, json.dumps(payload, indent=1))
    return folds


def _check_ids_and_groups(case_ids: Sequence[str], k: int,
                          groups: Mapping[str, str] | Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """(case ids as str, {case id: group}) after checking uniqueness, k and the groups."""
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
    n_groups = len(set(group_of.values()))
    if n_groups < k:
        raise ValueError(f"k={k} folds need at least k cases (or groups), got {n_groups}")
    return ids, group_of


def _assign_folds(ids: list[str], group_of: dict[str, str], k: int, seed: int) -> dict[str, int]:
    """{case id: fold}: groups shuffled with ``seed``, dealt largest-first to the smallest fold."""
    names = sorted(set(group_of.values()))
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
    return fold_of


#: the ``format`` of a nested split file; a file without it is a plain (train, val) split
NESTED_FORMAT = "nested-cv"


@dataclass(frozen=True)
class NestedFold:
    """One outer fold: ``train`` fits the weights, ``val`` (carved from the non-test cases)
    chooses the epoch and stops training, ``test`` is scored once. Ids in the input order."""

    train: list[str]
    val: list[str]
    test: list[str]


def nested_kfold_split(case_ids: Sequence[str], k: int = 5, seed: int = 0, val_fraction: float = 0.2,
                       path: str | None = None,
                       groups: Mapping[str, str] | Sequence[str] | None = None) -> list[NestedFold]:
    """Outer k-fold split into test folds, with a validation subset carved from each fold's rest.

    The outer assignment is :func:`kfold_split`'s (same ``seed`` -> same test folds). In
    each fold, ``round(val_fraction * G)`` of the G non-test groups (at least 1, at most
    G - 1) are drawn with a generator seeded by (``seed``, fold) as ``val``; the remaining
    groups are ``train``. Groups (patients) never straddle train/val/test.

    If ``path`` is given the split is written there as JSON ``{"format": "nested-cv", "k",
    "seed", "val_fraction", "folds": [{"train", "val", "test"}]}``. An existing file with
    the same cases, k and val_fraction is returned unchanged; any other file (another
    split, or a plain train/val split written before test folds existed) raises ValueError.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    ids, group_of = _check_ids_and_groups(case_ids, k, groups)
    if path is not None and os.path.exists(path):
        return _load_matching_nested(path, ids, k, float(val_fraction))
    fold_of = _assign_folds(ids, group_of, k, seed)
    folds = []
    for f in range(k):
        rest_groups = sorted({group_of[c] for c in ids if fold_of[c] != f})
        if len(rest_groups) < 2:
            raise ValueError(f"k={k}: fold {f} leaves {len(rest_groups)} group(s) outside its test set; "
                             f"a validation subset needs at least 2 (use fewer folds)")
        n_val = min(len(rest_groups) - 1, max(1, int(math.floor(val_fraction * len(rest_groups) + 0.5))))
        picked = np.random.default_rng([int(seed), f]).permutation(len(rest_groups))[:n_val]
        val_groups = {rest_groups[i] for i in picked}
        folds.append(NestedFold(
            train=[c for c in ids if fold_of[c] != f and group_of[c] not in val_groups],
            val=[c for c in ids if fold_of[c] != f and group_of[c] in val_groups],
            test=[c for c in ids if fold_of[c] == f]))
    if path is not None:
        payload = {"format": NESTED_FORMAT, "k": k, "seed": seed, "val_fraction": float(val_fraction),
                   "folds": [{"train": f.train, "val": f.val, "test": f.test} for f in folds]}
        atomic_write_text(path, json.dumps(payload, indent=1))
    return folds


def load_nested_split(path: str) -> list[NestedFold]:
    """Read a split written by :func:`nested_kfold_split`; a plain train/val split is refused."""
    payload = read_json_object(path, "split file")
    if payload.get("format") != NESTED_FORMAT:
        raise ValueError(f"{path}: a train/val split without test folds (written before nested "
                         f"cross-validation: its validation cases were also the scored ones); it "
                         f"cannot be reused for a nested run")
    try:
        return [NestedFold(list(f["train"]), list(f["val"]), list(f["test"])) for f in payload["folds"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable nested split file ({exc})") from exc


def _load_matching_nested(path: str, ids: list[str], k: int, val_fraction: float) -> list[NestedFold]:
    folds = load_nested_split(path)
    saved_fraction = json.load(open(path)).get("val_fraction")
    tested = sorted(c for f in folds for c in f.test)
    if len(folds) != k or tested != sorted(ids) or saved_fraction != val_fraction:
        raise ValueError(f"{path}: saved split has {len(folds)} folds over {len(tested)} cases with "
                         f"val_fraction {saved_fraction}, which does not match k={k} over the {len(ids)} "
                         f"given case ids with val_fraction {val_fraction}; delete the file or pass "
                         f"another path")
    order = {c: i for i, c in enumerate(ids)}
    return [NestedFold(*(sorted(part, key=order.__getitem__) for part in (f.train, f.val, f.test)))
            for f in folds]


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
