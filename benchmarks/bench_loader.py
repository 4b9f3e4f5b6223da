"""Loader throughput: slices per second from NIfTI volumes through SliceDataset + DataLoader.

Phantom 3D volumes are written as an nnU-Net folder of .nii.gz files; the benchmark
times (a) reading the folder with ``load_cases`` and (b) one pass of a DataLoader over
the slices (batch 32, foreground-aware sampling, with and without augmentation) for
several worker counts. Worker start-up is part of each pass, as in a training epoch,
except for the "persistent" rows (workers reused, steady state).
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from torch.utils.data import DataLoader

from unimri.data import SliceDataset, load_cases, make_phantom, write_nifti


def _write_folder(root: str, num_cases: int, shape: tuple[int, int, int]) -> None:
    os.makedirs(os.path.join(root, "imagesTr"))
    os.makedirs(os.path.join(root, "labelsTr"))
    with open(os.path.join(root, "dataset.json"), "w") as fh:
        json.dump({"channel_names": {"0": "T1"}, "labels": {"background": 0, "lesion": 1},
                   "file_ending": ".nii.gz"}, fh)
    for i in range(num_cases):
        case = make_phantom(i, spatial_dims=3, size=shape)
        write_nifti(os.path.join(root, "imagesTr", f"case{i:03d}_0000.nii.gz"), case.image[0], case.affine)
        write_nifti(os.path.join(root, "labelsTr", f"case{i:03d}.nii.gz"), case.label, case.affine)


def run(rec, quick: bool, device: str) -> None:
    num_cases, shape = (4, (64, 64, 32)) if quick else (8, (128, 128, 64))
    worker_counts = (0, 2) if quick else (0, 1, 2, 4)
    size = f"{num_cases}x{shape[0]}x{shape[1]}x{shape[2]}"
    with tempfile.TemporaryDirectory() as tmp:
        _write_folder(tmp, num_cases, shape)
        read_ms = rec.time("read_nifti_folder", "load_cases", "read", size,
                           lambda: load_cases(tmp), repeat=3 if quick else 5, warmup=1)
        rec.add("read_nifti_folder", "load_cases", "read", "throughput", "volumes/s", size,
                num_cases / (read_ms * 1e-3))
        cases = load_cases(tmp)
        for augment in (False, True):
            mode = "augment" if augment else "plain"
            dataset = SliceDataset(cases, axis=-1, fg_fraction=0.5, augment=augment)
            n_slices = len(dataset)
            configs = [(w, False) for w in worker_counts] + [(w, True) for w in worker_counts if w > 0]
            for workers, persistent in configs:
                loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                                    persistent_workers=persistent)
                provider = f"workers={workers}" + (" persistent" if persistent else "")

                def one_pass() -> int:
                    return sum(batch["image"].shape[0] for batch in loader)

                ms = rec.time("slice_loader", provider, mode, f"{size} ({n_slices} slices)",
                              one_pass, repeat=2 if quick else 3, warmup=1)
                rec.add("slice_loader", provider, mode, "throughput", "slices/s",
                        f"{size} ({n_slices} slices)", n_slices / (ms * 1e-3),
                        note=f"batch 32, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
                        + ("; workers reused across passes" if persistent else "; includes worker start-up"))
                del loader
