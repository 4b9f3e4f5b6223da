"""An nnU-Net v2 workspace for tests and benchmarks: raw-layout datasets and the environment.

:func:`write_raw_dataset` writes cases in nnU-Net's raw layout
(``DatasetXXX_Name/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
``imagesTs``, ``dataset.json``); :func:`nnunet_environment` gives the environment
variables that point nnU-Net at a workspace and at unimri's trainers; :func:`run_nnunet`
runs one nnU-Net command and raises with its output tail if it fails.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Sequence

import numpy as np

from unimri.data.volume import Volume

from . import trainer_path


def _nifti_of(array: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _as_volume_axes(array: np.ndarray) -> np.ndarray:
    """A 2D (H, W) slice as (H, W, 1); 3D stays."""
    return array[..., None] if array.ndim == 2 else array


def write_case(folder_images: str, folder_labels: str | None, case: Volume, case_id: str) -> None:
    """One case: ``<case_id>_0000.nii.gz`` per channel, and its label if a folder is given."""
    import nibabel as nib

    affine = np.asarray(case.affine, np.float64) if case.affine is not None else np.eye(4)
    for channel, image in enumerate(np.asarray(case.image)):
        nib.save(_nifti_of(_as_volume_axes(image.astype(np.float32)), affine),
                 os.path.join(folder_images, f"{case_id}_{channel:04d}.nii.gz"))
    if folder_labels is not None:
        nib.save(_nifti_of(_as_volume_axes(np.asarray(case.label).astype(np.uint8)), affine),
                 os.path.join(folder_labels, f"{case_id}.nii.gz"))


def write_raw_dataset(raw_root: str, dataset_id: int, name: str, train: Sequence[Volume],
                      test: Sequence[Volume] = (), class_names: Sequence[str] | None = None,
                      channel_names: Sequence[str] = ("MR",)) -> str:
    """Write ``train`` (imagesTr/labelsTr) and ``test`` (imagesTs, labels in labelsTs) cases; returns the folder.

    Case ids are ``case_<index>`` in the order given (test cases continue the numbering).
    """
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id: nnU-Net ids are 1..999, got {dataset_id!r}")
    folder = os.path.join(raw_root, f"Dataset{int(dataset_id):03d}_{name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i, case in enumerate(train):
        write_case(os.path.join(folder, "imagesTr"), os.path.join(folder, "labelsTr"), case, f"case_{i:03d}")
    for j, case in enumerate(test):
        write_case(os.path.join(folder, "imagesTs"), os.path.join(folder, "labelsTs"), case,
                   f"case_{len(train) + j:03d}")
    num_classes = int(max(int(np.max(c.label)) for c in train)) + 1
    names = list(class_names) if class_names else ["background"] + [f"class{c}" for c in range(1, num_classes)]
    meta = {"channel_names": {str(i): n for i, n in enumerate(channel_names)},
            "labels": {n: i for i, n in enumerate(names)},
            "numTraining": len(train), "file_ending": ".nii.gz"}
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
    return folder


def nnunet_environment(root: str, threads: int = 1, **budget: int) -> dict[str, str]:
    """os.environ plus nnU-Net's folders under ``root``, unimri's trainers, ``threads`` CPU threads, and ``epochs``/``iterations``/``val_iterations``
    budgets (``UNIMRI_NNUNET_*``) where given."""
    env = dict(os.environ)
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        env[var] = os.path.join(root, sub)
        os.makedirs(env[var], exist_ok=True)
    env["nnUNet_extTrainer"] = trainer_path()
    env["nnUNet_n_proc_DA"] = "1"  # planning sets torch's threads to it: it must be >= 1
    env["nnUNet_def_n_proc"] = "1"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "nnUNet_compile"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    names = {"epochs": "UNIMRI_NNUNET_EPOCHS", "iterations": "UNIMRI_NNUNET_ITERATIONS",
             "val_iterations": "UNIMRI_NNUNET_VAL_ITERATIONS"}
    for key, value in budget.items():
        if key not in names:
            raise ValueError(f"budget: unknown key {key!r}; expected {sorted(names)}")
        env[names[key]] = str(int(value))
    return env


def run_nnunet(args: Sequence[str], env: dict[str, str], timeout: float = 1800,
               augmentation_workers: int | None = None) -> str:
    """Run an nnU-Net command; returns its output, RuntimeError with the tail if it fails.

    ``augmentation_workers``: nnU-Net's data-augmentation worker processes for training
    (0: augment in the training process, as tests and CPU benchmarks want).
    """
    if augmentation_workers is not None:
        env = {**env, "nnUNet_n_proc_DA": str(int(augmentation_workers))}
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(args)} failed with exit code {proc.returncode}:\n{tail}")
    return proc.stdout + proc.stderr
