"""Folder layouts (nnU-Net and the paper's five datasets), each on a fixture written in
its published layout by the test, plus the bad-input errors."""
import json
import os

import numpy as np
import pytest
from conftest import needs

from unimri.data import SliceDataset, detect_layout, kfold_split, load_cases, write_image, write_nifti


AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
SHAPE = (12, 10, 8)


def _blob(shape=SHAPE, value=1, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int64)
    c = [int(rng.integers(3, s - 3)) for s in shape]
    label[tuple(slice(x - 2, x + 2) for x in c)] = value
    return label


def _image(shape=SHAPE, seed=0):
    return (np.random.default_rng(seed).random(shape) * 100 + 1).astype(np.float32)


# ---- nnU-Net ---------------------------------------------------------------------------------

def _nnunet(root, cases=("case_a", "case_b"), channels=2, spec=None):
    os.makedirs(root / "imagesTr")
    os.makedirs(root / "labelsTr")
    spec = spec or {"channel_names": {str(i): m for i, m in enumerate(["T2", "ADC"][:channels])},
                    "labels": {"background": 0, "lesion": 1, "oedema": 2}, "numTraining": len(cases),
                    "file_ending": ".nii.gz", "name": "Dataset001_Test"}
    (root / "dataset.json").write_text(json.dumps(spec))
    for i, case in enumerate(cases):
        for ch in range(channels):
            write_nifti(str(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz"), _image(seed=i * 10 + ch), AFFINE)
        label = _blob(seed=i)
        label[0, 0, 0] = 2
        write_nifti(str(root / "labelsTr" / f"{case}.nii.gz"), label, AFFINE)
    return root


@needs("nibabel")
def test_nnunet_multichannel(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Test")
    assert detect_layout(str(root)) == "nnunet"
    cases = load_cases(str(root))
    assert [c.case_id for c in cases] == ["case_a", "case_b"]
    case = cases[0]
    assert case.image.shape == (2,) + SHAPE and case.label.shape == SHAPE
    assert case.spacing == pytest.approx((1.0, 1.0, 2.0))
    np.testing.assert_allclose(case.affine, AFFINE)
    np.testing.assert_allclose(case.image[1], _image(seed=1))
    assert case.meta["modality"] == "MR" and case.meta["classes"] == ["background", "lesion", "oedema"]
    assert set(np.unique(case.label)) == {0, 1, 2}
    ds = SliceDataset(cases, num_classes=3)
    assert ds[0]["image"].shape == (2, 12, 10)


@needs("nibabel")
def test_nnunet_v1_json(tmp_path):
    spec = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "oedema"}}
    cases = load_cases(str(_nnunet(tmp_path / "d", channels=1, spec=spec)), layout="nnunet")
    assert cases[0].meta["modality"] == "CT" and cases[0].image.shape == (1,) + SHAPE


@needs("nibabel")
def test_nnunet_missing_keys_name_dataset_json(tmp_path):
    root = _nnunet(tmp_path / "d", spec={"labels": {"background": 0}})
    with pytest.raises(ValueError, match=r"dataset.json.*channel_names"):
        load_cases(str(root))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}}))
    with pytest.raises(ValueError, match=r"dataset.json.*labels"):
        load_cases(str(root))
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json"):
        load_cases(str(root))


@needs("nibabel")
def test_nnunet_shape_and_affine_mismatch_and_label_values(tmp_path):
    root = _nnunet(tmp_path / "d")
    write_nifti(str(root / "imagesTr" / "case_a_0001.nii.gz"), _image((12, 10, 9)), AFFINE)
    with pytest.raises(ValueError, match="case_a_0001.nii.gz.*shape"):
        load_cases(str(root))
    shifted = AFFINE.copy()
    shifted[0, 3] += 5
    write_nifti(str(root / "imagesTr" / "case_a_0001.nii.gz"), _image(), AFFINE)
    write_nifti(str(root / "labelsTr" / "case_a.nii.gz"), _blob(), shifted)
    with pytest.raises(ValueError, match="affine of label.*case_a.nii.gz"):
        load_cases(str(root))
    write_nifti(str(root / "labelsTr" / "case_a.nii.gz"), _blob(value=7), AFFINE)
    with pytest.raises(ValueError, match=r"case_a.nii.gz.*\[7\].*outside the declared classes 0..2"):
        load_cases(str(root))
    write_nifti(str(root / "labelsTr" / "case_a.nii.gz"), _blob().astype(np.float32) * 0.5, AFFINE)
    with pytest.raises(ValueError, match="case_a.nii.gz.*non-integer"):
        load_cases(str(root))
    os.remove(root / "labelsTr" / "case_a.nii.gz")
    with pytest.raises(ValueError, match="case_a.nii.gz.*does not exist"):
        load_cases(str(root))
    os.remove(root / "imagesTr" / "case_b_0001.nii.gz")
    with pytest.raises(ValueError, match="case_b_0001.nii.gz"):
        load_cases(str(root), labels=None)


@needs("nibabel")
def test_empty_and_unknown_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_cases(str(empty))
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="matches none"):
        load_cases(str(empty))
    with pytest.raises(ValueError, match="layout must be one of"):
        load_cases(str(empty), layout="kits")
    root = _nnunet(tmp_path / "d")
    for f in os.listdir(root / "imagesTr"):
        os.remove(root / "imagesTr" / f)
    with pytest.raises(ValueError, match="imagesTr.*found no images"):
        load_cases(str(root))


# ---- BUS 2017 Dataset B -------------------------------------------------------------------

def test_bus2017(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "BUS_Dataset_B"
    for i in (1, 2, 3):
        img = np.random.default_rng(i).integers(0, 255, (40, 56)).astype(np.uint8)
        mask = np.zeros((40, 56), np.uint8)
        mask[10 + i:20 + i, 20:30] = 255
        write_image(str(root / "original" / f"{i:06d}.png"), img)
        write_image(str(root / "GT" / f"{i:06d}.png"), mask)
    assert detect_layout(str(root)) == "bus2017"
    cases = load_cases(str(root))
    assert [c.case_id for c in cases] == ["bus_000001", "bus_000002", "bus_000003"]
    assert cases[0].image.shape == (1, 40, 56) and cases[0].label.shape == (40, 56)
    assert cases[0].label.sum() == 100 and cases[0].label[11, 20] == 1 and cases[0].label[10, 20] == 0
    assert cases[0].meta["modality"] == "US"
    write_image(str(root / "GT" / "000002.png"), np.full((40, 56), 7, np.uint8))
    with pytest.raises(ValueError, match="000002.png.*binary mask"):
        load_cases(str(root))
    os.remove(root / "GT" / "000002.png")
    with pytest.raises(ValueError, match="000002.png.*no mask"):
        load_cases(str(root))


# ---- DDTI ----------------------------------------------------------------------------------

DDTI_XML = """<?xml version="1.0" encoding="utf-8"?>
<case>
  <number>{n}</number>
  <age>49</age>
  <sex>F</sex>
  <composition>solid</composition>
  <tirads>4a</tirads>
  <mark>
    <image>1</image>
    <svg>[{{"points": [{{"x": 10, "y": 5}}, {{"x": 30, "y": 5}}, {{"x": 30, "y": 15}}, {{"x": 10, "y": 15}}], "annotation": {{}}, "regionType": "freehand"}}]</svg>
  </mark>
  <mark>
    <image>2</image>
    <svg>[{{"points": [{{"x": 2, "y": 2}}, {{"x": 8, "y": 2}}, {{"x": 8, "y": 8}}]}}, {{"points": [{{"x": 40, "y": 20}}, {{"x": 45, "y": 20}}, {{"x": 45, "y": 25}}, {{"x": 40, "y": 25}}]}}]</svg>
  </mark>
</case>
"""


def test_ddti(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "DDTI"
    for n in (1, 2):
        (root).mkdir(exist_ok=True)
        (root / f"{n}.xml").write_text(DDTI_XML.format(n=n))
        for m in (1, 2, 3):  # image 3 has no mark: skipped
            rgb = np.repeat(np.random.default_rng(n * 10 + m).integers(0, 255, (30, 50, 1)), 3, axis=2)
            write_image(str(root / f"{n}_{m}.jpg"), rgb.astype(np.uint8))
    assert detect_layout(str(root)) == "ddti"
    cases = load_cases(str(root))
    assert [c.case_id for c in cases] == ["ddti_1_1", "ddti_1_2", "ddti_2_1", "ddti_2_2"]
    first = cases[0]
    assert first.image.shape == (1, 30, 50) and first.label.shape == (30, 50)
    assert first.label[5:16, 10:31].all() and first.label.sum() == 11 * 21  # filled, edges included
    assert cases[1].label[22, 42] == 1 and cases[1].label[3, 7] == 1 and cases[1].label[15, 20] == 0
    groups = [c.meta["group"] for c in cases]
    for train, val in kfold_split([c.case_id for c in cases], k=2, groups=groups):
        assert len({c.split("_")[1] for c in val}) == 1  # a patient's images stay together
    (root / "2.xml").write_text(DDTI_XML.format(n=2).replace('"x": 40', '"x": forty'))
    with pytest.raises(ValueError, match="2.xml.*polygons"):
        load_cases(str(root))
    (root / "2.xml").write_text("<case><mark><image>1</image>")
    with pytest.raises(ValueError, match="2.xml.*polygons"):
        load_cases(str(root))
    (root / "2.xml").write_text(DDTI_XML.format(n=2).replace("<image>2</image>", "<image>9</image>"))
    with pytest.raises(ValueError, match="2.xml.*image 9"):
        load_cases(str(root))


# ---- LiTS ----------------------------------------------------------------------------------

@needs("nibabel")
def test_lits(tmp_path):
    root = tmp_path / "LiTS"
    for n, sub in ((0, "Training Batch 1"), (1, "Training Batch 1"), (28, "Training Batch 2")):
        liver = _blob(seed=n)
        liver[liver == 1] = 1
        liver[_blob(seed=n + 100) == 1] = 2
        write_nifti(str(root / sub / f"volume-{n}.nii"), _image(seed=n) - 1000, AFFINE)
        write_nifti(str(root / sub / f"segmentation-{n}.nii"), liver, AFFINE)
    assert detect_layout(str(root)) == "lits"
    cases = load_cases(str(root))
    assert [c.case_id for c in cases] == ["lits_000", "lits_001", "lits_028"]
    assert cases[0].meta["modality"] == "CT" and cases[0].meta["classes"] == ["background", "liver", "tumour"]
    assert set(np.unique(cases[0].label)) == {0, 1, 2}
    np.testing.assert_allclose(cases[2].image[0], _image(seed=28) - 1000, rtol=1e-6)
    tumour = load_cases(str(root), target="tumour")
    assert set(np.unique(tumour[0].label)) == {0, 1}
    assert tumour[0].label.sum() == (cases[0].label == 2).sum()
    write_nifti(str(root / "Training Batch 2" / "segmentation-28.nii"), _blob(value=3), AFFINE)
    with pytest.raises(ValueError, match="segmentation-28.nii.*outside"):
        load_cases(str(root))
    os.remove(root / "Training Batch 2" / "segmentation-28.nii")
    with pytest.raises(ValueError, match="volume-28.nii.*no segmentation"):
        load_cases(str(root))


# ---- ATLAS ----------------------------------------------------------------------------------

@needs("nibabel")
def test_atlas_r12_and_v2(tmp_path):
    root = tmp_path / "ATLAS_R1.2"
    t01 = root / "Site1" / "031768" / "t01"
    write_nifti(str(t01 / "031768_t1w_deface_stx.nii.gz"), _image(), AFFINE)
    write_nifti(str(t01 / "031768_LesionSmooth_stx.nii.gz"), _blob(seed=1).astype(np.uint8), AFFINE)
    write_nifti(str(t01 / "031768_LesionSmooth_1_stx.nii.gz"), (_blob(seed=2) * 255).astype(np.uint8), AFFINE)
    anat = root / "ATLAS_2" / "Training" / "R001" / "sub-r001s001" / "ses-1" / "anat"
    stem = "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
    write_nifti(str(anat / f"{stem}_T1w.nii.gz"), _image(seed=3), AFFINE)
    write_nifti(str(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"), _blob(seed=3), AFFINE)
    assert detect_layout(str(root)) == "atlas"
    cases = load_cases(str(root))
    assert len(cases) == 2
    r12 = next(c for c in cases if "031768" in c.case_id)
    assert r12.meta["group"] == "atlas_031768" and r12.meta["modality"] == "MR"
    np.testing.assert_array_equal(r12.label, np.maximum(_blob(seed=1), _blob(seed=2)))  # masks united
    v2 = next(c for c in cases if "sub-r001s001" in c.case_id)
    assert v2.meta["group"] == "atlas_sub-r001s001" and v2.label.sum() == _blob(seed=3).sum()
    write_nifti(str(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"), _blob(seed=3) * 3, AFFINE)
    with pytest.raises(ValueError, match="T1lesion_mask.nii.gz.*binary mask"):
        load_cases(str(root))


# ---- BraTS 2015 -----------------------------------------------------------------------------

def test_brats2015(tmp_path):
    pytest.importorskip("SimpleITK")
    root = tmp_path / "BRATS2015_Training"
    shape = (10, 12, 8)
    for grade, case, seed in (("HGG", "brats_2013_pat0001_1", 0), ("LGG", "brats_tcia_pat101_1", 1)):
        for k, mod in enumerate(("Flair", "T1", "T1c", "T2")):
            series = f"VSD.Brain.XX.O.MR_{mod}.{54512 + k}"
            write_image(str(root / grade / case / series / f"{series}.mha"), _image(shape, seed * 10 + k).astype(np.int16),
                        np.diag([-1.0, -1.0, 1.0, 1.0]))
        ot = np.zeros(shape, np.int64)
        ot[3:6, 3:6, 2:5] = 2
        ot[4, 4, 3] = 4
        ot[3, 3, 2] = 1
        series = "VSD.Brain_3more.XX.O.OT.54517"
        write_image(str(root / grade / case / series / f"{series}.mha"), ot.astype(np.uint8),
                    np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert detect_layout(str(root)) == "brats2015"
    cases = load_cases(str(root))
    assert [c.case_id for c in cases] == ["brats_2013_pat0001_1", "brats_tcia_pat101_1"]
    c = cases[0]
    assert c.image.shape == (4,) + shape and c.meta["channels"] == ["T1", "T1c", "T2", "Flair"]
    np.testing.assert_allclose(c.image[0], _image(shape, 1).astype(np.int16))  # T1 first
    np.testing.assert_allclose(c.image[3], _image(shape, 0).astype(np.int16))  # Flair last
    assert set(np.unique(c.label)) == {0, 1, 2, 4} and c.meta["grade"] == "HGG"
    # the files hold ITK (LPS) identity directions; the RAS affine flips x and y
    import SimpleITK as sitk
    itk = sitk.ReadImage(c.meta["image_files"][0])
    assert itk.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_allclose(c.affine, np.diag([-1.0, -1.0, 1.0, 1.0]), atol=1e-9)
    whole = load_cases(str(root), target="whole")[0]
    assert whole.label.sum() == 27 and set(np.unique(whole.label)) == {0, 1}
    enhancing = load_cases(str(root), target="enhancing")[0]
    assert enhancing.label.sum() == 1
    two = load_cases(str(root), modalities=("Flair", "T2"))[0]
    assert two.image.shape == (2,) + shape
    series = "VSD.Brain.XX.O.MR_T2.54515"
    os.remove(root / "LGG" / "brats_tcia_pat101_1" / series / f"{series}.mha")
    with pytest.raises(ValueError, match=r"brats_tcia_pat101_1.*\['T2'\]"):
        load_cases(str(root))
