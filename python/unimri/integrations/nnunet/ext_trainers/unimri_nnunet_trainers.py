"""Entry module that nnU-Net imports from ``nnUNet_extTrainer``; the trainers live in
:mod:`unimri.integrations.nnunet.trainers`."""
from unimri.integrations.nnunet.trainers import (  # noqa: F401
    nnUNetTrainerBudget,
    nnUNetTrainerUnifiedFocal,
    nnUNetTrainerUnifiedFocalSAS,
)
