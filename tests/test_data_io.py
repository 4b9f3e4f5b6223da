"""Readers/writers, resampling round trips, bad files, optional-dependency messages."""
import builtins
import gzip
import os

import numpy as np
import pytest
from conftest import LazyModule, needs

from unimri.data import Volume, read_image, resample, write_image, write_nifti
from unimri.data.resample import resample_array

nib = LazyModule("nibabel")

OBLIQUE = np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.0, 3.0, 4.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@needs("nibabel")
def test_volume_round_trip_keeps_array_affine_spacing(tmp_path, suffix):
    if suffix in (".mha", ".nrrd"):
        pytest.importorskip("SimpleITK")
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = write_image(str(tmp_path / f"x{suffix}"), arr, OBLIQUE)
    back, affine, spacing, meta = read_image(path)
    np.testing.assert_allclose(back, arr)
    np.testing.assert_allclose(affine, OBLIQUE, atol=1e-6)
    assert spacing == pytest.approx((1.5, 2.0, 3.0))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


@needs("nibabel")
def test_read_resample_write_keeps_affine_spacing_and_integer_labels(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random((16, 12, 10)).astype(np.float32)
    label = np.zeros((16, 12, 10), np.int64)
    label[4:10, 3:9, 2:8] = 1
    label[6:8, 5:7, 4:6] = 2
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-8, 4, 20)
    write_nifti(str(tmp_path / "img.nii.gz"), image, affine)
    write_nifti(str(tmp_path / "lab.nii.gz"), label, affine)
    img, aff, sp, _ = read_image(str(tmp_path / "img.nii.gz"))
    lab = read_image(str(tmp_path / "lab.nii.gz"))[0]
    assert np.issubdtype(lab.dtype, np.integer)
    vol = Volume(img[None], lab, aff, sp, "c")
    out = resample(vol, spacing=(2.0, 2.0, 2.0))
    assert out.spatial_shape == (8, 6, 10) and out.spacing == pytest.approx((2.0, 2.0, 2.0))
    # voxel centres: new voxel 0 spans old voxels 0-1 along x/y, so its centre is at old index 0.5
    np.testing.assert_allclose(out.affine[:3, 3], affine[:3, :3] @ [0.5, 0.5, 0] + affine[:3, 3])
    assert out.label.dtype == np.int64 and set(np.unique(out.label)) <= {0, 1, 2}
    write_nifti(str(tmp_path / "lab2.nii.gz"), out.label, out.affine)
    write_nifti(str(tmp_path / "img2.nii.gz"), out.image[0], out.affine)
    lab2, aff2, sp2, meta = read_image(str(tmp_path / "lab2.nii.gz"))
    assert np.issubdtype(lab2.dtype, np.integer) and np.array_equal(lab2, out.label)
    np.testing.assert_allclose(aff2, out.affine, atol=1e-6)
    hdr = nib.load(str(tmp_path / "img2.nii.gz")).header
    assert tuple(float(z) for z in hdr.get_zooms()) == pytest.approx((2.0, 2.0, 2.0))
    # the world position of the labelled block is preserved
    centre_old = affine @ np.append(np.argwhere(label > 0).mean(0), 1)
    centre_new = out.affine @ np.append(np.argwhere(out.label > 0).mean(0), 1)
    np.testing.assert_allclose(centre_old[:3], centre_new[:3], atol=1.0)


def test_resample_orders_and_shape_argument():
    vol = Volume(np.arange(64, dtype=np.float32).reshape(1, 8, 8), np.eye(8, dtype=np.int64), np.eye(4),
                 (1.0, 1.0), "c")
    up = resample(vol, shape=(16, 16), order=0)
    assert up.spacing == (0.5, 0.5) and up.label.shape == (16, 16) and up.label.sum() == 32
    pytest.importorskip("scipy")
    cubic = resample(vol, spacing=0.5, order=3)
    assert cubic.image.shape == (1, 16, 16) and abs(cubic.image.mean() - vol.image.mean()) < 1.0
    with pytest.raises(ValueError, match="order"):
        resample_array(vol.image, (4, 4), order=2)
    with pytest.raises(ValueError, match="exactly one"):
        resample(vol)


def test_2d_image_round_trip(tmp_path):
    pytest.importorskip("PIL")
    arr = np.random.default_rng(0).integers(0, 255, (9, 13)).astype(np.uint8)
    for suffix in (".png", ".bmp"):
        back, affine, spacing, _ = read_image(write_image(str(tmp_path / f"a{suffix}"), arr))
        assert np.array_equal(back, arr) and spacing == (1.0, 1.0)


@needs("nibabel")
def test_truncated_and_corrupt_nifti_name_the_file(tmp_path):
    good = write_nifti(str(tmp_path / "good.nii.gz"), np.random.rand(20, 20, 20).astype(np.float32), np.eye(4))
    raw = open(good, "rb").read()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.nii.gz"):
        read_image(str(truncated))
    plain = tmp_path / "short.nii"
    plain.write_bytes(gzip.decompress(raw)[:1000])
    with pytest.raises(ValueError, match="short.nii"):
        read_image(str(plain))
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(ValueError, match="garbage.nii"):
        read_image(str(garbage))
    with pytest.raises(ValueError, match="does not exist"):
        read_image(str(tmp_path / "missing.nii.gz"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt.*unknown type"):
        read_image(str(text))


def test_missing_optional_package_names_pip_package(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == "nibabel":
            raise ImportError("No module named 'nibabel'")
        return real_import(name, *args, **kwargs)

    import importlib
    import sys

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "nibabel", raising=False)
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: fake_import(name) if name == "nibabel" else real_import(name))
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match="pip install nibabel"):
        read_image(str(path))


def test_write_nifti_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="affine"):
        write_nifti(str(tmp_path / "a.nii.gz"), np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(str(tmp_path / "a.png"), np.zeros((2, 2, 2)), np.eye(4))
