"""DICOM series in (pydicom) and DICOM SEG out (highdicom), on series written by the tests."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from conftest import needs

pytestmark = needs("pydicom")

from unimri.data import read_image  # noqa: E402
from unimri.data.limits import voxel_limit  # noqa: E402

SHAPE = (12, 10, 6)  # (columns, rows, slices)
ROW_DIR = np.array([np.cos(0.3), np.sin(0.3), 0.0])  # oblique: rotated 0.3 rad about z, then tilted
COL_DIR = np.array([-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), np.sin(0.2)])
PIXEL_SPACING = (0.8, 0.7)  # (between rows, between columns)
SLICE_GAP = 2.5
ORIGIN = np.array([-30.0, 12.5, 40.0])


def _voxels() -> np.ndarray:
    """Stored values (X, Y, Z) = (columns, rows, slices) with a pattern that tells every axis apart."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (x + 20 * y + 300 * z).astype(np.uint16)


def _slice_dataset(values_xy: np.ndarray, position, *, series_uid, study_uid, frame_uid, number,
                   slope=1.0, intercept=0.0, orientation=None):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P0", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.ReferringPhysicianName, ds.Manufacturer = "", "unimri-tests"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    orient = orientation if orientation is not None else np.concatenate([ROW_DIR, COL_DIR])
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orient]
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = SLICE_GAP
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = values_xy.shape[1], values_xy.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(values_xy.T).astype(np.uint16).tobytes()
    return ds


def write_series(folder, *, skip=(), slope=1.0, intercept=0.0, tilt=0.0, series_uid=None, names=None,
                 gap=SLICE_GAP):
    """A synthetic series into ``folder``, files named in shuffled order; returns (voxels, RAS affine)."""
    from pydicom.uid import generate_uid

    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    normal = np.cross(ROW_DIR, COL_DIR)
    voxels = _voxels()
    order = np.random.default_rng(1).permutation(SHAPE[2])
    for k in range(SHAPE[2]):
        if k in skip:
            continue
        position = ORIGIN + k * gap * normal + k * tilt * ROW_DIR
        ds = _slice_dataset(voxels[:, :, k], position, series_uid=series_uid, study_uid=study_uid,
                            frame_uid=frame_uid, number=k + 1, slope=slope, intercept=intercept)
        name = names[k] if names else f"IM{order[k]:04d}.dcm"
        ds.save_as(os.path.join(folder, name), enforce_file_format=True)
    lps = np.eye(4)
    lps[:3, 0] = ROW_DIR * PIXEL_SPACING[1]
    lps[:3, 1] = COL_DIR * PIXEL_SPACING[0]
    lps[:3, 2] = normal * gap
    lps[:3, 3] = ORIGIN
    return voxels, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_series_is_sorted_by_position_with_its_oblique_geometry(tmp_path):
    voxels, affine = write_series(tmp_path / "s")
    array, got_affine, spacing, meta = read_image(str(tmp_path / "s"))
    np.testing.assert_array_equal(array, voxels)  # file names are shuffled: only positions sort
    np.testing.assert_allclose(got_affine, affine, atol=1e-5)
    np.testing.assert_allclose(spacing, (0.7, 0.8, 2.5), atol=1e-6)
    assert meta["format"] == "dicom" and array.dtype == np.uint16


@needs("SimpleITK", "nibabel")
def test_affine_matches_simpleitk_read_through_nifti(tmp_path):
    import SimpleITK as sitk

    write_series(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    nifti = str(tmp_path / "s.nii.gz")
    sitk.WriteImage(reader.Execute(), nifti)
    want, want_affine, _, _ = read_image(nifti)
    array, affine, _, _ = read_image(str(tmp_path / "s"))
    np.testing.assert_allclose(affine, want_affine, atol=1e-4)
    np.testing.assert_array_equal(array, want)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    voxels, _ = write_series(tmp_path / "s", slope=0.5, intercept=-1024.0)
    array, *_ = read_image(str(tmp_path / "s"))
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, voxels * 0.5 - 1024.0, rtol=0, atol=1e-3)


def test_single_file_and_multi_frame_file(tmp_path):
    import pydicom
    from pydicom.sequence import Sequence

    write_series(tmp_path / "s", names=[f"f{k}.dcm" for k in range(SHAPE[2])])
    one, affine1, _, _ = read_image(str(tmp_path / "s" / "f2.dcm"))
    np.testing.assert_array_equal(one[:, :, 0], _voxels()[:, :, 2])
    assert one.shape == (SHAPE[0], SHAPE[1], 1)
    # An enhanced multi-frame file built from the slices, frames stored in reverse order.
    slices = [pydicom.dcmread(str(tmp_path / "s" / f"f{k}.dcm")) for k in range(SHAPE[2])][::-1]
    ds = copy.deepcopy(slices[0])
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, kw)
    ds.NumberOfFrames = len(slices)
    shared, frames = pydicom.Dataset(), []
    shared.PlaneOrientationSequence = Sequence([pydicom.Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = slices[0].ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([pydicom.Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = slices[0].PixelSpacing
    for s in slices:
        item = pydicom.Dataset()
        item.PlanePositionSequence = Sequence([pydicom.Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = s.ImagePositionPatient
        frames.append(item)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    ds.save_as(str(tmp_path / "multi.dcm"), enforce_file_format=True)
    array, affine, _, _ = read_image(str(tmp_path / "multi.dcm"))
    _, series_affine, _, _ = read_image(str(tmp_path / "s"))
    np.testing.assert_array_equal(array, _voxels())
    np.testing.assert_allclose(affine, series_affine, atol=1e-6)
    np.testing.assert_allclose(affine1[:3, 3], series_affine[:3, 3] + 2 * series_affine[:3, 2], atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("missing", "uneven slice spacing"),
    ("tilt", "gantry tilt"),
    ("mixed", "holds 2 series"),
    ("duplicate", "same position"),
])
def test_bad_series_is_refused_naming_the_folder(tmp_path, case, message):
    folder = tmp_path / case
    if case == "missing":
        write_series(folder, skip=(3,))
    elif case == "tilt":
        write_series(folder, tilt=0.4)
    elif case == "mixed":
        write_series(folder)
        write_series(folder, names=[f"other{k}.dcm" for k in range(SHAPE[2])])
    else:
        write_series(folder, gap=0.0)
    with pytest.raises(ValueError, match=message) as info:
        read_image(str(folder))
    assert str(folder) in str(info.value)


def test_mixed_folder_series_picked_by_uid_and_other_files_ignored(tmp_path):
    from unimri.data.dicom import read_dicom

    folder = tmp_path / "mixed"
    write_series(folder, series_uid="1.2.3.4")
    write_series(folder, slope=2.0, series_uid="1.2.3.5", names=[f"b{k}.dcm" for k in range(SHAPE[2])])
    (folder / "notes.txt").write_text("not DICOM")
    sr = _slice_dataset(_voxels()[:, :, 0], ORIGIN, series_uid="9.9", study_uid="9.8", frame_uid="9.7", number=1)
    for kw in ("Rows", "Columns", "PixelData"):  # a non-image DICOM file (as a report would be)
        delattr(sr, kw)
    sr.save_as(str(folder / "report.dcm"), enforce_file_format=True)
    array, *_ = read_dicom(str(folder), series_uid="1.2.3.5")
    np.testing.assert_allclose(array, _voxels() * 2.0)
    with pytest.raises(ValueError, match="no series '7.7'"):
        read_dicom(str(folder), series_uid="7.7")
    with pytest.raises(ValueError, match="holds no image"):
        read_image(str(folder / "report.dcm"))


def test_declared_shape_is_checked_before_pixels_are_decoded(tmp_path, monkeypatch):
    import pydicom

    write_series(tmp_path / "s")
    real = pydicom.dcmread

    def no_pixels(path, *args, **kwargs):
        assert kwargs.get("stop_before_pixels"), "pixel data read before the size check"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", no_pixels)
    with voxel_limit(100), pytest.raises(ValueError, match=r"declares shape \(12, 10, 6\) = 720 voxels"):
        read_image(str(tmp_path / "s"))


def test_pydicom_sample_files_and_a_truncated_one():
    from pydicom.data import get_testdata_file
    import pydicom

    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"pydicom's sample {name} is not installed")
        ds = pydicom.dcmread(path)
        array, affine, _, _ = read_image(path)
        want = ds.pixel_array.T * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        np.testing.assert_allclose(array[:, :, 0], want, atol=1e-3)
        lps_origin = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(affine[:3, 3], lps_origin * [-1, -1, 1], atol=1e-6)
    truncated = get_testdata_file("MR_truncated.dcm")
    if truncated is not None:
        with pytest.raises(ValueError, match="MR_truncated.dcm"):
            read_image(truncated)


@needs("highdicom")
def test_seg_round_trip_has_the_source_geometry(tmp_path):
    from unimri.data.dicom import read_seg
    from unimri.data.io import write_image

    _, affine = write_series(tmp_path / "s")
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:7, 3:6, 1:4] = 1
    labels[8:10, 1:3, 5] = 2
    out = write_image(str(tmp_path / "seg.dcm"), labels, affine, source=str(tmp_path / "s"))
    back, back_affine = read_seg(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)
    with pytest.raises(ValueError, match="differs from the DICOM source's grid"):
        write_image(str(tmp_path / "bad.dcm"), labels[:, :, :3], affine, source=str(tmp_path / "s"))
    assert not os.path.exists(tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match="needs the source DICOM series"):
        write_image(str(tmp_path / "bad.dcm"), labels, affine)


@needs("highdicom", "nibabel")
def test_cli_predict_dicom_folder_to_seg(tmp_path, capsys):
    import torch

    from unimri.cli import main
    from unimri.data.dicom import read_seg
    from unimri.models import create_model
    from unimri.train.checkpoint import save_checkpoint
    from unimri.infer.predict import InferenceSpec

    torch.manual_seed(0)
    spec = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "num_classes": 2, "features": 4,
                                       "depth": 2}}
    model = create_model("unet", **spec["kwargs"])
    ckpt = str(tmp_path / "m.pt")
    save_checkpoint(ckpt, {"model_spec": spec, "inference": InferenceSpec(3, (8, 8, 4), 2, 1, patch=(8, 8, 4),
                                                                          modality="MR").to_dict(),
                           "model": model.state_dict()})
    _, affine = write_series(tmp_path / "s")
    base = ["predict", "--checkpoint", ckpt, "--input", str(tmp_path / "s"), "--device", "cpu", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "seg.nii.gz")]) == 0
    assert main([*base, "--output", str(tmp_path / "seg.dcm")]) == 0
    nifti, nifti_affine, _, _ = read_image(str(tmp_path / "seg.nii.gz"))
    labels, seg_affine = read_seg(str(tmp_path / "seg.dcm"))
    np.testing.assert_array_equal(labels, nifti)
    assert 0 < np.count_nonzero(labels) < labels.size, "the untrained model should predict both classes"
    np.testing.assert_allclose(seg_affine, affine, atol=1e-5)
    np.testing.assert_allclose(nifti_affine, affine, atol=1e-5)
    # A bad series: exit code 2, one line naming the folder, nothing written.
    write_series(tmp_path / "gap", skip=(2,))
    capsys.readouterr()
    code = main(["predict", "--checkpoint", ckpt, "--input", str(tmp_path / "gap"), "--output",
                 str(tmp_path / "gap.dcm"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "uneven slice spacing" in err and str(tmp_path / "gap") in err
    assert not os.path.exists(tmp_path / "gap.dcm")


def test_nnunet_folder_with_dicom_series_and_seg_labels_trains_like_nifti(tmp_path, capsys):
    """A training folder in nnU-Net's raw layout whose images are DICOM series folders, with
    labels as NIfTI on the series' grid or as DICOM SEG: loaded with the series' voxels and
    geometry, listed by `unimri datasets`, and a missing label is named."""
    import json

    from unimri.cli import main
    from unimri.data import load_cases, write_nifti

    root = tmp_path / "Dataset001_Dicom"
    (root / "labelsTr").mkdir(parents=True)
    json.dump({"channel_names": {"0": "T2"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 2,
               "file_ending": ".nii.gz"}, open(root / "dataset.json", "w"))
    voxels, affine = write_series(root / "imagesTr" / "caseA_0000")
    write_series(root / "imagesTr" / "caseB_0000")
    label = np.zeros(SHAPE, np.uint8)
    label[3:7, 2:6, 1:4] = 1
    write_nifti(str(root / "labelsTr" / "caseA.nii.gz"), label, affine)
    pytest.importorskip("highdicom")
    from unimri.data.dicom import write_seg

    write_seg(str(root / "labelsTr" / "caseB.dcm"), label, str(root / "imagesTr" / "caseB_0000"))
    cases = load_cases(str(root))
    assert [c.case_id for c in cases] == ["caseA", "caseB"]
    for case in cases:
        np.testing.assert_array_equal(case.image[0], voxels.astype(np.float32))
        np.testing.assert_array_equal(case.label, label)
        np.testing.assert_allclose(case.affine, affine, atol=1e-5)
        assert case.meta["modality"] == "MR" and case.meta["classes"] == ["background", "lesion"]
    assert main(["datasets", str(root)]) == 0
    assert "caseB" in capsys.readouterr().out
    os.remove(root / "labelsTr" / "caseB.dcm")
    with pytest.raises(ValueError, match=r"case 'caseB': label file .*caseB\.nii\.gz.* does not exist \(nor a DICOM SEG .*caseB\.dcm"):
        load_cases(str(root))
