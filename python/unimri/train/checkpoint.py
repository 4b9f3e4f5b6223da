"""Checkpoints: atomic writes, RNG capture/restore and model-identity checks.

A checkpoint is a dict with ``format == "unimri-checkpoint"``, the model spec
(``{"name", "kwargs"}``), the weights and, for ``last.pt``, everything that makes
``--resume`` continue exactly: optimizer, scheduler and grad-scaler states, the fold,
stage and epoch, early-stopping state and every random generator's state.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from unimri._atomic import atomic_write_bytes

FORMAT = "unimri-checkpoint"
VERSION = 1


def save_checkpoint(path: str, state: dict[str, Any]) -> str:
    """Write ``state`` (plus format tags) atomically with torch.save."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    return atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a unimri checkpoint; ValueError if the file is missing or not one."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: file {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"checkpoint: {path!r} is not a readable torch checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path!r} is not a unimri checkpoint (no format tag {FORMAT!r})")
    return state


def check_model_spec(found: dict[str, Any], expected: dict[str, Any], path: str = "checkpoint") -> None:
    """ValueError naming the differing keys if a checkpoint was made for another model."""
    diffs = []
    if found.get("name") != expected.get("name"):
        diffs.append(f"name {found.get('name')!r} != {expected.get('name')!r}")
    fk, ek = found.get("kwargs", {}), expected.get("kwargs", {})
    for key in sorted(set(fk) | set(ek)):
        if fk.get(key) != ek.get(key):
            diffs.append(f"{key} {fk.get(key)!r} != {ek.get(key)!r}")
    if diffs:
        raise ValueError(f"{path}: checkpoint was made for another model ({'; '.join(diffs)})")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str = "checkpoint") -> None:
    """load_state_dict with a ValueError that lists missing/unexpected/mis-shaped keys.

    Checkpoints written before the attention modules were named by position are upgraded
    (``model.upgrade_state_dict``) first.
    """
    if hasattr(model, "upgrade_state_dict"):
        state_dict = model.upgrade_state_dict(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path}: weights do not fit this model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {shapes[:5]})"
        )
    model.load_state_dict(state_dict)


def capture_rng() -> dict[str, Any]:
    """Every generator a training step may draw from (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
