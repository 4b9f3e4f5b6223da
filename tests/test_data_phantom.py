"""phantom built-in, SliceDataset/VolumeDataset, augmentation, normalisation, k-fold splits."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from unimri.data import (Augmentation, SliceDataset, Volume, VolumeDataset, apply_zscore, kfold_split,
                         list_datasets, load_cases, load_split, make_phantom, zscore_stats)


# ---- phantom -------------------------------------------------------------------------------

def test_phantom_is_deterministic_per_seed_and_index():
    a, b = make_phantom(3, seed=7), make_phantom(3, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, make_phantom(4, seed=7).image)
    assert not np.array_equal(a.label, make_phantom(3, seed=8).label)


def test_phantom_2d_defaults_shape_dtype_and_imbalance():
    cases = load_cases("phantom", num_cases=24)
    assert len(cases) == 24 and len({c.case_id for c in cases}) == 24
    fractions = np.array([c.foreground_fraction() for c in cases])
    for c in cases:
        assert c.image.shape == (1, 128, 128) and c.image.dtype == np.float32
        assert c.label.shape == (128, 128) and c.label.dtype == np.int64
        assert set(np.unique(c.label)) == {0, 1}
        assert c.meta["modality"] == "MR"
    # default target 1-5 %: realised fractions stay near it (irregular boundaries)
    assert 0.004 < fractions.min() and fractions.max() < 0.07
    assert 0.01 < fractions.mean() < 0.045
    # lesions differ in intensity from the tissue around them (hyper or hypo)
    c = cases[0]
    ring = np.zeros_like(c.label, bool)
    ys, xs = np.nonzero(c.label)
    ring[max(ys.min() - 6, 0):ys.max() + 7, max(xs.min() - 6, 0):xs.max() + 7] = True
    ring &= c.label == 0
    assert abs(c.image[0][c.label == 1].mean() - c.image[0][ring].mean()) > 0.1


@settings(max_examples=6)
@given(fg=st.floats(0.005, 0.1), index=st.integers(0, 1000))
def test_phantom_foreground_fraction_follows_request(fg, index):
    case = make_phantom(index, fg_fraction=fg, num_lesions=1, size=96)
    assert 0.3 * fg < case.foreground_fraction() < 2.0 * fg


def test_phantom_3d_and_multiclass():
    vol = make_phantom(0, spatial_dims=3, size=(40, 48, 32))
    assert vol.image.shape == (1, 40, 48, 32) and vol.label.shape == (40, 48, 32)
    assert vol.spacing == (1.0, 1.0, 1.0) and 0 < vol.foreground_fraction() < 0.1
    multi = make_phantom(1, num_classes=4)
    assert set(np.unique(multi.label)) == {0, 1, 2, 3}
    # the oedema ring (2) surrounds the lesion core (1): every core pixel touches no background
    core = multi.label == 1
    grown = core.copy()
    grown[1:] |= core[:-1]; grown[:-1] |= core[1:]; grown[:, 1:] |= core[:, :-1]; grown[:, :-1] |= core[:, 1:]
    assert (multi.label[grown & ~core] != 0).mean() > 0.9
    assert multi.meta["classes"] == ["background", "lesion", "oedema", "lesion_type2"]


@pytest.mark.parametrize("kw, word", [({"spatial_dims": 4}, "spatial_dims"), ({"num_classes": 1}, "num_classes"),
                                      ({"fg_fraction": (0.2, 0.1)}, "fg_fraction"), ({"size": 8}, "size")])
def test_phantom_bad_arguments(kw, word):
    with pytest.raises(ValueError, match=word):
        make_phantom(0, **kw)


def test_list_datasets_names_builtins_and_layouts():
    names = dict(list_datasets())
    for name in ("phantom", "colin27-hippocampus", "nnunet", "bus2017", "ddti", "lits", "atlas", "brats2015"):
        assert name in names and len(names[name]) > 20


def test_load_cases_unknown_source():
    with pytest.raises(ValueError, match="neither a built-in"):
        load_cases("no-such-dataset")


# ---- normalisation and augmentation ---------------------------------------------------------

def _case(image, label, modality="MR", case_id="c"):
    return Volume(image[None].astype(np.float32), label, np.eye(4), (1.0,) * label.ndim, case_id,
                  {"modality": modality})


def test_zscore_masks_zero_voxels_for_mr_only():
    rng = np.random.default_rng(0)
    img = np.zeros((20, 20), np.float32)
    img[5:15, 5:15] = rng.normal(10, 2, (10, 10))
    lab = np.zeros((20, 20), np.int64)
    mr = _case(img, lab, "MR")
    mean, std, masked = zscore_stats(mr)
    out = apply_zscore(mr.image, mean, std, masked)
    assert masked and np.all(out[0][img == 0] == 0)
    assert abs(out[0][img != 0].mean()) < 1e-4 and abs(out[0][img != 0].std() - 1) < 1e-3
    ct = _case(img, lab, "CT")
    mean, std, masked = zscore_stats(ct)
    out = apply_zscore(ct.image, mean, std, masked)
    assert not masked and abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), h=st.integers(9, 24), w=st.integers(9, 24))
def test_flips_and_rotations_keep_labels_aligned(seed, h, w):
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(rng.integers(0, 3, (h, w)))
    image = torch.stack([label.float(), 2 * label.float()])
    aug = Augmentation(flip_prob=0.5, rot90_prob=1.0, affine_prob=0.0, intensity_prob=0.0)
    out_img, out_lab = aug(image, label, np.random.default_rng(seed))
    assert out_img.shape[1:] == out_lab.shape
    torch.testing.assert_close(out_img[0], out_lab.float())
    torch.testing.assert_close(out_img[1], 2 * out_lab.float())
    assert sorted(out_lab.flatten().tolist()) == sorted(label.flatten().tolist())


@settings(max_examples=6)
@given(seed=st.integers(0, 10_000), dims=st.sampled_from([2, 3]))
def test_affine_warp_keeps_labels_integer_and_aligned(seed, dims):
    shape = (40, 40) if dims == 2 else (20, 20, 20)
    label = np.zeros(shape, np.int64)
    label[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 1
    label[tuple(slice(s // 3, s // 2) for s in shape)] = 2
    lab_t = torch.from_numpy(label)
    aug = Augmentation(flip_prob=0, rot90_prob=0, affine_prob=1.0, intensity_prob=0)
    img, lab = aug(lab_t[None].float(), lab_t, np.random.default_rng(seed))
    assert lab.dtype == torch.int64 and set(lab.unique().tolist()) <= {0, 1, 2}
    # bilinear image and nearest label warped by the same grid agree away from edges
    agree = (img[0].round().long() == lab).float().mean()
    assert agree > 0.93
    assert (lab > 0).sum() > 0.6 * (lab_t > 0).sum()


def test_intensity_augmentation_changes_image_not_label():
    label = torch.zeros(8, 8, dtype=torch.long)
    image = torch.ones(1, 8, 8)
    aug = Augmentation(flip_prob=0, rot90_prob=0, affine_prob=0, intensity_prob=1.0)
    img, lab = aug(image, label, np.random.default_rng(1))
    assert torch.equal(lab, label) and not torch.equal(img, image)
    assert 0.8 <= img.mean().item() <= 1.2


# ---- SliceDataset / VolumeDataset -----------------------------------------------------------

@pytest.fixture(scope="module")
def volumes():
    return load_cases("phantom", num_cases=4, spatial_dims=3, size=(32, 32, 24))


def test_slice_dataset_items_and_foreground_sampling(volumes):
    ds = SliceDataset(volumes, axis=-1, fg_fraction=0.8, seed=3)
    assert len(ds) == 4 * 24
    item = ds[5]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert item["case_id"] in {v.case_id for v in volumes}
    hits = np.mean([ds[i]["label"].any().item() for i in range(len(ds))])
    assert 0.65 < hits < 0.95  # 80 % requested; natural rate is lower
    natural = ds.num_foreground_slices / len(ds)
    low = SliceDataset(volumes, fg_fraction=0.0, seed=3)
    assert np.mean([low[i]["label"].any().item() for i in range(len(low))]) == 0.0
    assert natural < 0.8


def test_slice_dataset_enumerates_without_sampling_and_other_axes(volumes):
    ds = SliceDataset(volumes, axis=0, fg_fraction=None, normalize=None)
    assert len(ds) == 4 * 32
    item = ds[33]
    np.testing.assert_array_equal(item["image"].numpy(), volumes[1].image[:, 1])
    np.testing.assert_array_equal(item["label"].numpy(), volumes[1].label[1])
    assert item["slice_index"] == 1


def test_slice_dataset_is_deterministic_per_epoch(volumes):
    ds = SliceDataset(volumes, augment=True, seed=1)
    a = ds[7]
    b = ds[7]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    epoch0 = [(ds[i]["case_id"], ds[i]["slice_index"]) for i in range(20)]
    ds.set_epoch(1)
    epoch1 = [(ds[i]["case_id"], ds[i]["slice_index"]) for i in range(20)]
    assert epoch0 != epoch1  # a new epoch draws new slices
    ds.set_epoch(0)
    assert [(ds[i]["case_id"], ds[i]["slice_index"]) for i in range(20)] == epoch0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 32, 32)


def test_slice_dataset_2d_cases_and_bad_input():
    cases = load_cases("phantom", num_cases=3, size=64)
    ds = SliceDataset(cases, num_classes=2)
    assert len(ds) == 3 and ds[0]["image"].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="outside the declared classes"):
        SliceDataset(load_cases("phantom", num_cases=1, num_classes=3, size=64), num_classes=2)
    with pytest.raises(ValueError, match="fg_fraction"):
        SliceDataset(cases, fg_fraction=1.5)
    with pytest.raises(ValueError, match="normalize"):
        SliceDataset(cases, normalize="minmax")
    with pytest.raises(ValueError, match="empty"):
        SliceDataset([])
    unlabelled = Volume(np.zeros((1, 8, 8)), None, np.eye(4), (1.0, 1.0), "u")
    with pytest.raises(ValueError, match="no label"):
        SliceDataset([unlabelled])


def test_volume_dataset_patches_centre_on_foreground(volumes):
    ds = VolumeDataset(volumes, patch_size=(16, 16, 16), fg_fraction=1.0, samples_per_case=3)
    assert len(ds) == 12
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 16, 16, 16) and item["label"].shape == (16, 16, 16)
        assert item["label"].any()
    whole = VolumeDataset(volumes, augment=True)[0]
    assert whole["image"].shape == (1, 32, 32, 24)
    padded = VolumeDataset(volumes, patch_size=(40, 8, 8), fg_fraction=0.0)[0]
    assert padded["image"].shape == (1, 40, 8, 8) and torch.all(padded["image"][:, 32:] == 0)


# ---- k-fold ----------------------------------------------------------------------------------

@settings(max_examples=10)
@given(n=st.integers(5, 40), k=st.integers(2, 5), seed=st.integers(0, 100))
def test_kfold_partitions_cases(n, k, seed):
    ids = [f"case{i}" for i in range(n)]
    folds = kfold_split(ids, k=k, seed=seed)
    assert len(folds) == k
    vals = [c for _, v in folds for c in v]
    assert sorted(vals) == sorted(ids)  # each case validated exactly once
    for train, val in folds:
        assert not set(train) & set(val) and sorted(train + val) == sorted(ids)
        assert abs(len(val) - n / k) <= 1
    assert folds == kfold_split(ids, k=k, seed=seed)


def test_kfold_never_splits_slices_or_groups(volumes, tmp_path):
    ids = [v.case_id for v in volumes]
    train, val = kfold_split(ids, k=2, seed=0)[0]
    train_ds = SliceDataset([v for v in volumes if v.case_id in train], fg_fraction=None)
    val_ds = SliceDataset([v for v in volumes if v.case_id in val], fg_fraction=None)
    assert not {train_ds[i]["case_id"] for i in range(len(train_ds))} & \
        {val_ds[i]["case_id"] for i in range(len(val_ds))}
    images = [f"p{p}_img{j}" for p in range(6) for j in range(3)]
    groups = [name.split("_")[0] for name in images]
    for train, val in kfold_split(images, k=3, seed=1, groups=groups):
        assert not {g.split("_")[0] for g in train} & {g.split("_")[0] for g in val}

    path = tmp_path / "split.json"
    folds = kfold_split(ids, k=2, seed=5, path=str(path))
    saved = json.loads(path.read_text())
    assert saved["k"] == 2 and saved["seed"] == 5
    assert load_split(str(path)) == folds
    assert kfold_split(ids, k=2, seed=99, path=str(path)) == folds  # the saved split is reused
    with pytest.raises(ValueError, match="does not match"):
        kfold_split(ids[:3], k=2, path=str(path))


@pytest.mark.parametrize("args, word", [((["a", "a", "b"],), "unique"), ((["a", "b"], 3), "at least k"),
                                        ((["a", "b"], 1), "k must")])
def test_kfold_bad_input(args, word):
    with pytest.raises(ValueError, match=word):
        kfold_split(*args)
