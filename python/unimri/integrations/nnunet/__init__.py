"""nnU-Net v2 plugin: trainers with unimri's fused Unified Focal loss and SAS gates.

nnU-Net finds the trainers through its ``nnUNet_extTrainer`` environment variable::

    export nnUNet_extTrainer=$(unimri nnunet-path)
    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerUnifiedFocalSAS
    nnUNetv2_predict -i imagesTs -o preds -d DATASET -c 2d -f 0 -tr nnUNetTrainerUnifiedFocalSAS

:mod:`.trainers` needs ``nnunetv2`` (``pip install 'unimri[nnunet]'``); :mod:`.loss` and
:mod:`.sas` only need torch (and ``dynamic_network_architectures`` for the gates).
"""
from __future__ import annotations

import os

TRAINER_NAMES = ("nnUNetTrainerUnifiedFocal", "nnUNetTrainerUnifiedFocalSAS", "nnUNetTrainerBudget")


def trainer_path() -> str:
    """The folder to put in ``nnUNet_extTrainer`` (it holds one module exporting the trainers)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")
