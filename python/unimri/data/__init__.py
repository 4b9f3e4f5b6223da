"""Medical image data: readers, the paper's dataset layouts, built-in datasets, datasets.

Public API::

    load_cases(source, layout=None, **kw) -> list[Volume]   # built-in name or folder
    list_datasets() -> list[(name, description)]
    kfold_split(case_ids, k=5, seed=0, path=None, groups=None)
    SliceDataset(cases, axis=-1, fg_fraction=0.5, augment=False, normalize="zscore", seed=0)
    VolumeDataset(cases, patch_size=None, ...)

nibabel, SimpleITK and Pillow are imported only inside the readers that need them.
"""
from . import phantom as _phantom  # noqa: F401  (registers the built-ins, then the layouts)
from . import colin27 as _colin27  # noqa: F401
from . import layouts as _layouts  # noqa: F401
from .colin27 import colin27_available, colin27_cases
from .inspect import case_row, case_table
from .io import check_finite, count_nonfinite, read_image, write_image, write_nifti
from .datasets import SliceDataset, VolumeDataset
from .phantom import make_phantom, phantom_cases
from .resample import resample, resample_array
from .registry import BUILTINS, LAYOUTS, detect_layout, list_datasets, load_cases, missing_source_message
from .splits import kfold_split, load_split
from .transforms import Augmentation, apply_zscore, intensity_mismatch, intensity_profile, zscore_stats
from .volume import Volume, affine_from_spacing, orientation_code, spacing_from_affine

__all__ = [
    "Volume", "load_cases", "list_datasets", "detect_layout", "kfold_split", "load_split",
    "SliceDataset", "VolumeDataset", "Augmentation", "make_phantom", "phantom_cases",
    "zscore_stats", "apply_zscore", "affine_from_spacing", "spacing_from_affine",
    "read_image", "write_image", "write_nifti", "resample", "resample_array",
    "colin27_cases", "colin27_available", "check_finite", "count_nonfinite", "orientation_code",
    "case_row", "case_table", "missing_source_message", "BUILTINS", "LAYOUTS",
    "intensity_profile", "intensity_mismatch",
]
