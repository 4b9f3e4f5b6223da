"""Checkpoints that hold only data: atomic writes, integrity hash, RNG capture/restore.

A checkpoint is a ``torch.save`` file of one dict holding nothing but tensors and plain
data (dict, list, tuple, str, int, float, bool, None): ``format == "unimri-checkpoint"``,
``version`` 2, the model spec (``{"name", "kwargs"}``), the weights and, for ``last.pt``,
everything that makes ``--resume`` continue exactly (optimizer, scheduler and
grad-scaler states, fold/stage/epoch, early-stopping state, every random generator's
state encoded as tensors and numbers). Opening one never runs code: it is read with
``torch.load(weights_only=True)``, whose unpickler only rebuilds those types.

``integrity`` records the SHA-256 of every value in the file (tensor bytes, dtypes,
shapes, keys and plain values); a truncated or altered file is refused as a whole.
Files of format version 1 could hold arbitrary Python objects and are refused with the
command that converts them (``unimri convert-checkpoint``, :mod:`unimri.train.convert`).
"""
from __future__ import annotations

import hashlib
import os
import random
import zipfile
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from unimri._atomic import atomic_write_bytes
from unimri.data.limits import available_memory_bytes

FORMAT = "unimri-checkpoint"
VERSION = 2
CONVERT_HINT = "unimri convert-checkpoint OLD NEW --trust-this-file"
_PLAIN = (str, int, float, bool, type(None))


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of nested dicts/lists/tuples, keys in a fixed order."""
    if isinstance(value, dict):
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"checkpoint: key {key!r} at {path or '/'} is not a str or int")
            yield from _walk(value[key], f"{path}/{type(key).__name__[0]}:{key}")
        yield path + "/{}", len(value)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}/{i}")
        yield path + ("/()" if isinstance(value, tuple) else "/[]"), len(value)
    else:
        yield path, value


def _check_plain(state: dict[str, Any]) -> None:
    """TypeError naming the first value that is neither a tensor nor plain data."""
    for path, leaf in _walk(state):
        if not isinstance(leaf, torch.Tensor) and type(leaf) not in _PLAIN:
            raise TypeError(f"checkpoint: value at {path} is a {type(leaf).__name__}; a checkpoint "
                            "holds only tensors and plain data (str, int, float, bool, None, "
                            "dict, list, tuple)")


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over every key, plain value and tensor (dtype, shape, bytes) of ``state``,
    leaving out its ``integrity`` entry."""
    digest = hashlib.sha256()
    for path, leaf in _walk({k: v for k, v in state.items() if k != "integrity"}):
        digest.update(path.encode("utf-8") + b"\0")
        if isinstance(leaf, torch.Tensor):
            data = leaf.detach().to("cpu").contiguous()
            digest.update(f"T{data.dtype}{tuple(data.shape)}\0".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{type(leaf).__name__}:{leaf!r}\0".encode("utf-8"))
    return digest.hexdigest()


def save_checkpoint(path: str, state: dict[str, Any]) -> str:
    """Write ``state`` (plus format tags and its integrity hash) atomically.

    Raises:
        TypeError naming the value if ``state`` holds anything but tensors and plain data.
    """
    payload = {"format": FORMAT, "version": VERSION, **state}
    _check_plain(payload)
    payload["integrity"] = {"sha256": state_digest(payload)}
    return atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def _check_archive(path: str) -> None:
    """Refuse a file that is not a torch zip archive or would decode to more than half the
    available memory (torch.save stores its records uncompressed)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"checkpoint: {path!r} is not a readable torch checkpoint (truncated or "
                         f"corrupt? {exc})") from None
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
        raise ValueError(f"checkpoint: {path!r} holds compressed records; torch.save never writes "
                         "them, so the file was not written by unimri")
    total = sum(info.file_size for info in infos)
    free = available_memory_bytes()
    if free is not None and total > free // 2:
        raise ValueError(f"checkpoint: {path!r} declares {total / 2**30:.1f} GiB of records, more than "
                         f"half of the available memory ({free / 2**30:.1f} GiB)")


def _refuse_old(path: str, why: str) -> ValueError:
    return ValueError(f"checkpoint: {path!r} {why}; if it is a unimri checkpoint from an older "
                      f"release and you trust its source, convert it once with: {CONVERT_HINT}")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a unimri checkpoint without running any code stored in it.

    Raises:
        ValueError naming the file if it is missing, truncated, altered (integrity hash),
        not a unimri checkpoint, or of the older format that needs an explicit conversion.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: file {path!r} does not exist")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unreadable file is the same user error
        reason = " ".join(str(exc).split())
        if "weights_only" in reason or "Unsupported global" in reason or "Unpickl" in reason:
            raise _refuse_old(path, "holds Python objects other than tensors and plain data, "
                                    "which are never unpickled") from None
        raise ValueError(f"checkpoint: {path!r} cannot be read (truncated or corrupt?): "
                         f"{reason[:300]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path!r} is not a unimri checkpoint (no format tag {FORMAT!r})")
    if state.get("version") != VERSION:
        raise _refuse_old(path, f"is checkpoint format {state.get('version')!r}, this release reads "
                                f"format {VERSION}")
    recorded = (state.get("integrity") or {}).get("sha256") if isinstance(state.get("integrity"), dict) else None
    if recorded is None or recorded != state_digest(state):
        raise ValueError(f"checkpoint: {path!r} fails its integrity check (the file was altered or "
                         "damaged after it was written); nothing was loaded")
    device = torch.device(map_location) if not isinstance(map_location, torch.device) else map_location
    return state if device.type == "cpu" else _to_device(state, device)


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

    State dicts whose attention modules are named by kind rather than position are renamed
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


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def _python_state_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss}


def _python_state_from_plain(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss_next"]


def capture_rng() -> dict[str, Any]:
    """Every generator a training step may draw from (python, numpy, torch CPU and CUDA),
    as tensors and plain numbers."""
    state = {"python": _python_state_to_plain(random.getstate()),
             "numpy": _numpy_state_to_plain(np.random.get_state()),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_python_state_from_plain(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
