"""Checkpoints and scans from outside: opening them never runs code or exhausts memory."""
import gzip
import os
import re
import resource
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import needs

from unimri.cli import main
from unimri.data import read_image
from unimri.data.limits import check_declared_shape, voxel_limit
from unimri.models import UNet
from unimri.train.checkpoint import FORMAT, load_checkpoint, load_weights, save_checkpoint, state_digest
from unimri.train.convert import convert_checkpoint

HUGE = (30_000, 30_000, 12)  # 1.08e10 voxels; NIfTI-1 axes stop at 32,767
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _CreatesFile:
    """Unpickling this object opens (creates) ``path``: a stand-in for any code in a pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(tmp_path, version=1):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "model.pt")
    torch.save({"format": FORMAT, "version": version, "payload": _CreatesFile(marker),
                "model": {"w": torch.ones(2)}}, path)
    return path, marker


def test_malicious_checkpoint_runs_no_code_and_names_the_conversion(tmp_path):
    path, marker = _malicious(tmp_path)
    with pytest.raises(ValueError, match="convert-checkpoint OLD NEW --trust-this-file"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


@needs("nibabel")
def test_malicious_checkpoint_through_the_cli_runs_no_code(tmp_path, capsys):
    from unimri.data import write_image

    path, marker = _malicious(tmp_path, version=2)
    scan = write_image(str(tmp_path / "x.nii.gz"), np.zeros((8, 8, 8), np.float32), np.eye(4))
    rc = main(["predict", "--checkpoint", path, "--input", scan, "--output", str(tmp_path / "y.nii.gz")])
    assert rc == 2
    assert not os.path.exists(marker)
    assert "--trust-this-file" in capsys.readouterr().err
    rc = main(["convert-checkpoint", path, str(tmp_path / "new.pt")])  # no trust flag: nothing opened
    assert rc == 2 and not os.path.exists(marker)


def test_no_source_file_unpickles_except_the_explicit_conversion():
    allowed = {os.path.join("python", "unimri", "train", "convert.py")}
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True|"
                         r"yaml\.load\(|yaml\.unsafe_load|torch\.load\(")
    found = []
    for top in ("python", "unimri_kernels", "benchmarks", "scripts"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT)
                    with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
                        for no, line in enumerate(fh, 1):
                            if pattern.search(line) and rel not in allowed:
                                found.append(f"{rel}:{no}: {line.strip()}")
    # load_checkpoint's own weights_only=True call is the one torch.load outside the conversion
    assert [f for f in found if "weights_only=True" not in f] == []


def _good_checkpoint(tmp_path):
    model = UNet(spatial_dims=2, in_channels=1, num_classes=2, features=4)
    path = str(tmp_path / "good.pt")
    save_checkpoint(path, {"model_spec": {"name": "unet", "kwargs": {"features": 4}},
                           "model": model.state_dict(), "note": "x", "history": [{"loss": 0.5}]})
    return path, model


def test_round_trip_keeps_every_tensor_and_value(tmp_path):
    path, model = _good_checkpoint(tmp_path)
    state = load_checkpoint(path)
    assert state["version"] == 2 and state["history"] == [{"loss": 0.5}]
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    assert state["integrity"]["sha256"] == state_digest(state)


def test_checkpoint_refuses_non_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"value at /s:extra is a ndarray"):
        save_checkpoint(str(tmp_path / "x.pt"), {"extra": np.zeros(2)})
    assert not os.listdir(tmp_path)  # nothing half-written


def test_truncated_checkpoint_is_refused_whole(tmp_path):
    path, _ = _good_checkpoint(tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_tampered_tensor_fails_the_integrity_check(tmp_path):
    path, model = _good_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1.0  # altered, hash left as written
    torch.save(state, path)
    with pytest.raises(ValueError, match="integrity check"):
        load_checkpoint(path)


def test_flipped_byte_in_a_tensor_record_is_refused(tmp_path):
    path, _ = _good_checkpoint(tmp_path)
    data = bytearray(open(path, "rb").read())
    start = data.index(b"/data/0") + 200  # inside the first tensor record's bytes
    data[start] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="integrity check|truncated or corrupt"):
        load_checkpoint(path)


def test_convert_only_with_trust_then_loads_safely(tmp_path):
    old = str(tmp_path / "old.pt")
    model = UNet(spatial_dims=2, in_channels=1, num_classes=2, features=4)
    rng_numpy = np.random.get_state()
    torch.save({"format": FORMAT, "version": 1, "model_spec": {"name": "unet", "kwargs": {"features": 4}},
                "model": model.state_dict(), "history": [{"val": np.float64(0.25)}],
                "rng": {"numpy": rng_numpy, "python": __import__("random").getstate(),
                        "torch": torch.get_rng_state()}}, old)
    with pytest.raises(ValueError, match="load_checkpoint|convert-checkpoint"):
        load_checkpoint(old)
    new = str(tmp_path / "new.pt")
    with pytest.raises(ValueError, match="--trust-this-file"):
        convert_checkpoint(old, new)
    assert not os.path.exists(new)
    assert main(["convert-checkpoint", old, new, "--trust-this-file"]) == 0
    state = load_checkpoint(new)
    assert state["history"] == [{"val": 0.25}]
    assert np.array_equal(state["rng"]["numpy"]["keys"].numpy().astype(np.uint32), rng_numpy[1])
    fresh = UNet(spatial_dims=2, in_channels=1, num_classes=2, features=4)
    load_weights(fresh, state["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_rng_capture_restore_is_exact_through_a_checkpoint(tmp_path):
    import random

    from unimri.train.checkpoint import capture_rng, restore_rng

    path = str(tmp_path / "rng.pt")
    save_checkpoint(path, {"rng": capture_rng()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ---------------------------------------------------------------- scans

def _nifti_bytes(shape, vox_offset=352.0):
    nib = pytest.importorskip("nibabel")
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header["vox_offset"] = vox_offset
    return header.binaryblock + b"\0" * 4 + b"\0" * 64


def test_limit_check_names_file_and_shape():
    with pytest.raises(ValueError, match=r"'scan.nii': header declares shape \(30000, 30000, 12\)"):
        check_declared_shape("scan.nii", HUGE, 2)
    with voxel_limit(10):
        with pytest.raises(ValueError, match="more than the limit of 10"):
            check_declared_shape("x", (4, 3), 1)
    assert check_declared_shape("x", (4, 3), 1, limit=12) == 12


@needs("nibabel")
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_header_claiming_1e10_voxels_is_refused_before_reading(tmp_path, suffix):
    path = str(tmp_path / f"huge{suffix}")
    data = _nifti_bytes(HUGE)
    with (gzip.open if suffix.endswith(".gz") else open)(path, "wb") as fh:
        fh.write(data)
    with pytest.raises(ValueError, match=r"declares shape \(30000, 30000, 12\)"):
        read_image(path)


@needs("nibabel")
def test_nifti_data_offset_far_beyond_the_header_is_refused(tmp_path):
    path = str(tmp_path / "offset.nii.gz")
    with gzip.open(path, "wb") as fh:
        fh.write(_nifti_bytes((4, 4, 4), vox_offset=2.0**31))
    with pytest.raises(ValueError, match="voxel data at byte 2147483648"):
        read_image(path)


@needs("nibabel")
def test_gzip_bomb_behind_a_small_header_reads_only_the_declared_voxels(tmp_path):
    path = str(tmp_path / "bomb.nii.gz")
    zeros = b"\0" * (1 << 24)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(_nifti_bytes((8, 8, 8))[:352])
        for _ in range(64):  # 1 GiB of zeros after the 1 KiB of declared voxels
            fh.write(zeros)
    assert os.path.getsize(path) < 4 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    array, *_ = read_image(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert array.shape == (8, 8, 8) and not array.any()
    assert grown_mib < 64


def _itk_header_file(tmp_path, suffix):
    pytest.importorskip("SimpleITK")
    path = tmp_path / f"huge{suffix}"
    if suffix == ".nrrd":
        head = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 30000 30000 12\nendian: little\nencoding: gzip\n\n")
        path.write_bytes(head + gzip.compress(b"\0" * 1024))
    else:
        head = (b"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 12\nElementType = MET_SHORT\n"
                b"ElementDataFile = LOCAL\n")
        path.write_bytes(head + b"\0" * 1024)
    return str(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_header_claiming_1e10_voxels_is_refused_before_reading(tmp_path, suffix):
    path = _itk_header_file(tmp_path, suffix)
    with pytest.raises(ValueError, match=r"declares shape \(30000, 30000, 12\)"):
        read_image(path)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_claiming_1e10_pixels_is_refused_before_decoding(tmp_path):
    pytest.importorskip("PIL")
    path = tmp_path / "huge.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 1e10 pixels
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + _png_chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=r"declares shape \(100000, 100000, 1\)"):
        read_image(str(path))


@needs("nibabel")
def test_max_voxels_flag_applies_to_every_command(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    path = str(tmp_path / "small.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), path)
    rc = main(["--max-voxels", "100", "predict", "--checkpoint", str(tmp_path / "none.pt"),
               "--input", path, "--output", str(tmp_path / "out.nii.gz")])
    assert rc == 2  # the checkpoint is missing; the limit itself is tested below
    from unimri.data.limits import max_voxels, set_max_voxels

    assert max_voxels() == 100
    with pytest.raises(ValueError, match="more than the limit of 100"):
        read_image(path)
    set_max_voxels(None)
    assert read_image(path)[0].shape == (8, 8, 8)
