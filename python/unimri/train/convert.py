"""``unimri convert-checkpoint OLD NEW --trust-this-file``: the one place that unpickles.

Checkpoints of format version 1 were plain pickles that may hold any Python object, and
opening such a file can run code. This module reads one only when the user passes
``trust=True`` (the CLI's ``--trust-this-file``) and writes it again as a format-2
checkpoint (tensors and plain data, integrity hash) that :func:`load_checkpoint` opens
safely from then on.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from unimri.train import checkpoint as ckpt

TRUST_FLAG = "--trust-this-file"


def _plain(value: Any, path: str) -> Any:
    """``value`` with numpy arrays/scalars turned into tensors/numbers; TypeError otherwise."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _plain(v, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{path}/{i}") for i, v in enumerate(value))
    raise TypeError(f"convert-checkpoint: value at {path} is a {type(value).__name__}, which a "
                    "checkpoint cannot hold")


def _convert_rng(rng: dict[str, Any]) -> dict[str, Any]:
    out = dict(rng)
    if isinstance(rng.get("python"), tuple):
        out["python"] = ckpt._python_state_to_plain(rng["python"])
    if isinstance(rng.get("numpy"), tuple):
        out["numpy"] = ckpt._numpy_state_to_plain(rng["numpy"])
    return out


def convert_checkpoint(src: str, dst: str, trust: bool = False) -> str:
    """Rewrite the format-1 checkpoint ``src`` as a safe format-2 checkpoint at ``dst``.

    Raises:
        ValueError unless ``trust`` (opening ``src`` can run code stored in it);
        ValueError naming the file if it is missing or not a unimri checkpoint.
    """
    if not trust:
        raise ValueError(f"convert-checkpoint: opening {src!r} can run code stored in it; "
                              f"pass {TRUST_FLAG} only if you trust where the file came from")
    if not os.path.isfile(src):
        raise ValueError(f"convert-checkpoint: file {src!r} does not exist")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("convert-checkpoint: OLD and NEW must be different files")
    try:
        state = torch.load(src, map_location="cpu", weights_only=False)  # the user vouched for src
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"convert-checkpoint: {src!r} is not a readable torch checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != ckpt.FORMAT:
        raise ValueError(f"convert-checkpoint: {src!r} is not a unimri checkpoint "
                         f"(no format tag {ckpt.FORMAT!r})")
    state = {k: v for k, v in state.items() if k not in ("format", "version", "integrity")}
    if isinstance(state.get("rng"), dict):
        state["rng"] = _convert_rng(state["rng"])
    return ckpt.save_checkpoint(dst, _plain(state, ""))
