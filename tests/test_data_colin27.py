"""colin27-hippocampus on the real Debian mricron-data files (CI installs the package)."""
import numpy as np
import pytest
from conftest import needs

from unimri.data import SliceDataset, colin27_available, kfold_split, load_cases


needs_mricron = pytest.mark.skipif(not colin27_available(),
                                reason="Debian package mricron-data is not installed "
                                       "(sudo apt-get install mricron-data)")


@pytest.fixture(scope="module")
def full():
    return load_cases("colin27-hippocampus")[0]


@needs_mricron
@needs("nibabel")
def test_full_volume_properties(full):
    assert full.image.shape == (1, 181, 217, 181) and full.label.shape == (181, 217, 181)
    assert full.spacing == (1.0, 1.0, 1.0)
    expected = np.array([[1, 0, 0, -90], [0, 1, 0, -125], [0, 0, 1, -71], [0, 0, 0, 1]], float)
    np.testing.assert_allclose(full.affine, expected)
    assert set(np.unique(full.label)) == {0, 1}
    assert full.foreground_fraction() == pytest.approx(0.0021, abs=0.0002)
    # the hippocampus sits in the medial temporal lobe: both hemispheres, below the AC plane
    world = (full.affine @ np.c_[np.argwhere(full.label == 1), np.ones(int(full.label.sum()))].T)[:3]
    assert (world[0] < 0).any() and (world[0] > 0).any()
    assert -45 < world[2].mean() < 0
    # real MR: brain tissue under the label is brighter than the background
    assert full.image[0][full.label == 1].mean() > 3 * full.image[0][:10, :10, :10].mean()


@needs_mricron
@needs("nibabel")
def test_crop_downsample_amygdala():
    case = load_cases("colin27-hippocampus", crop_margin=8, downsample=2, amygdala=True)[0]
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert all(20 < s < 60 for s in case.spatial_shape)
    assert case.spacing == pytest.approx((2.0, 2.0, 2.0), rel=0.05)
    assert 0.01 < (case.label == 1).mean() < 0.1 and (case.label == 2).sum() > 0
    # cropping shifts the affine origin to the box's first voxel (still inside the old grid)
    assert np.all(case.affine[:3, 3] > np.array([-90, -125, -71]))


@needs_mricron
@needs("nibabel")
def test_pieces_for_kfold(full):
    halves = load_cases("colin27-hippocampus", cases="hemispheres")
    assert [h.case_id for h in halves] == ["colin27_left", "colin27_right"]
    assert sum(h.spatial_shape[0] for h in halves) == 181
    assert all(h.label.sum() > 0 for h in halves)
    assert sum(int(h.label.sum()) for h in halves) == int(full.label.sum())
    np.testing.assert_allclose(halves[1].affine[0, 3], 0.0)  # right half starts at the midline x = 0
    slabs = load_cases("colin27-hippocampus", cases="slabs", num_slabs=5, crop_margin=4)
    assert len(slabs) == 5 and all(s.label.sum() > 0 for s in slabs)
    folds = kfold_split([s.case_id for s in slabs], k=5)
    assert all(len(v) == 1 for _, v in folds)
    ds = SliceDataset(slabs, fg_fraction=0.5)
    assert ds[0]["image"].shape[0] == 1 and ds.num_foreground_slices == sum(s.spatial_shape[2] for s in slabs) - \
        sum(int((~s.label.any(axis=(0, 1))).sum()) for s in slabs)
    with pytest.raises(ValueError, match="cases"):
        load_cases("colin27-hippocampus", cases="thirds")


def test_missing_package_message(tmp_path):
    """Runs everywhere: an empty root gives the install command."""
    with pytest.raises(FileNotFoundError, match="apt-get install mricron-data"):
        load_cases("colin27-hippocampus", root=str(tmp_path))
