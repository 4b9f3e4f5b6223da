"""``load_cases`` / ``list_datasets``: built-in datasets by name, folders by layout."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from .io import check_finite, count_nonfinite
from .volume import Volume


@dataclass(frozen=True)
class Source:
    """A named data source: a built-in dataset or a recognised folder layout."""

    name: str
    description: str
    load: Callable[..., list[Volume]]
    detect: Callable[[str], bool] | None = None  # folder layouts only


BUILTINS: dict[str, Source] = {}
LAYOUTS: dict[str, Source] = {}


def register_builtin(name: str, description: str):
    """Decorator registering ``fn(**kw) -> list[Volume]`` as a built-in dataset."""
    def wrap(fn: Callable[..., list[Volume]]):
        BUILTINS[name] = Source(name, description, fn)
        return fn
    return wrap


def register_layout(name: str, description: str, detect: Callable[[str], bool]):
    """Decorator registering ``fn(folder, **kw) -> list[Volume]`` as a folder layout."""
    def wrap(fn: Callable[..., list[Volume]]):
        LAYOUTS[name] = Source(name, description, fn, detect)
        return fn
    return wrap


def list_datasets() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in dataset, then of every folder layout."""
    rows = [(s.name, f"built-in: {s.description}") for s in BUILTINS.values()]
    rows += [(s.name, f"folder layout: {s.description}") for s in LAYOUTS.values()]
    return rows


def missing_source_message(source: str) -> str:
    """Why ``source`` (neither a built-in name nor an existing path) cannot be loaded."""
    looks_like_path = os.sep in source or source.startswith(".") or source.startswith("~")
    if looks_like_path:
        return f"path {source!r} does not exist"
    return (f"{source!r} is neither a built-in dataset ({', '.join(sorted(BUILTINS))}) nor an existing "
            f"path; a folder in one of the layouts {sorted(LAYOUTS)} can be given by its path")


def detect_layout(folder: str) -> str:
    """Name of the layout of ``folder``; ValueError if none (or several) match."""
    if not os.path.exists(folder):
        raise ValueError(f"source: {missing_source_message(folder)}")
    if not os.path.isdir(folder):
        raise ValueError(f"source: {folder!r} is a file; expected a folder in one of the layouts "
                         f"{sorted(LAYOUTS)} or a built-in dataset name")
    if not os.listdir(folder):
        raise ValueError(f"folder {folder!r} is empty; expected one of the layouts {sorted(LAYOUTS)}")
    hits = [name for name, src in LAYOUTS.items() if src.detect is not None and src.detect(folder)]
    if not hits:
        raise ValueError(f"folder {folder!r} matches none of the recognised layouts {sorted(LAYOUTS)}; "
                         f"see unimri.data.list_datasets() for their folder trees, or pass layout=")
    if len(hits) > 1:
        raise ValueError(f"folder {folder!r} matches several layouts {hits}; pass layout= to choose")
    return hits[0]


def load_cases(source: str, layout: str | None = None, replace_nonfinite: float | None = None,
               check_finite: bool = True, **kwargs) -> list[Volume]:
    """Load every case of a built-in dataset or of a folder.

    Args:
        source: a built-in name ("phantom", "colin27-hippocampus") or a folder path.
        layout: folder layout name (see :func:`list_datasets`); auto-detected if None.
        replace_nonfinite: a value that NaN/inf voxels of the images become. By default
            (None) a case with such voxels raises ValueError naming its file(s) and the count.
        check_finite: False keeps non-finite voxels as they are (for inspection only:
            ``unimri datasets`` counts them; training on them gives NaN losses).
        **kwargs: passed to the built-in generator or the layout reader.

    Returns:
        list of :class:`Volume`, one per case, sorted by case id for folders.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a dataset name or folder path, got {type(source).__name__}")
    source = os.fspath(source)
    if source in BUILTINS:
        if layout is not None:
            raise ValueError(f"layout= applies to folders, not to the built-in dataset {source!r}")
        cases = BUILTINS[source].load(**kwargs)
    else:
        if layout is None:
            layout = detect_layout(source)
        elif layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        elif not os.path.isdir(source):
            raise ValueError(f"source: {missing_source_message(source)}" if not os.path.exists(source)
                             else f"source {source!r} is not a folder")
        cases = LAYOUTS[layout].load(source, **kwargs)
        if not cases:
            raise ValueError(f"folder {source!r} ({layout} layout) holds no cases")
    if check_finite or replace_nonfinite is not None:
        for case in cases:
            _check_case_finite(case, replace_nonfinite)
    return cases


def _check_case_finite(case: Volume, replace: float | None) -> None:
    """Raise (naming the file) or replace in place when the image has NaN/inf voxels."""
    bad_per_channel = [count_nonfinite(ch) for ch in case.image]
    if not any(bad_per_channel):
        return
    files = list(case.meta.get("image_files") or [])
    if len(files) == len(bad_per_channel):
        where = ", ".join(repr(f) for f, n in zip(files, bad_per_channel) if n)
    else:
        where = ", ".join(repr(f) for f in files) or "(generated)"
    case.image = check_finite(case.image, f"case {case.case_id!r}, image file {where}", replace)
