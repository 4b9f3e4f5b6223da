"""nnU-Net v2 trainers with unimri's fused asymmetric Unified Focal loss (and SAS gates).

* ``nnUNetTrainerUnifiedFocal``: nnU-Net's default trainer with its Dice + CE loss
  replaced by :class:`unimri.losses.UnifiedFocalLoss` (asymmetric; λ, δ, γ as class
  attributes), wrapped in nnU-Net's own deep-supervision weights (1, 1/2, 1/4, ...,
  lowest output 0, normalised). The ignore label of ``dataset.json`` is left out of
  every sum; ``batch_dice`` of the plans pools the Tversky counts over the batch.
  Region-based training (``regions_class_order``) is refused: the loss is a softmax loss.
* ``nnUNetTrainerUnifiedFocalSAS``: the same loss, and selective attention gates on
  every skip connection of the planned U-Net (:func:`unimri.integrations.nnunet.sas.add_sas_gates`).
* ``nnUNetTrainerBudget``: nnU-Net's default trainer unchanged (the peer in benchmarks).

All three take a shortened budget from the environment, for tests and equal-time
benchmarks: ``UNIMRI_NNUNET_EPOCHS``, ``UNIMRI_NNUNET_ITERATIONS`` (training iterations
per epoch) and ``UNIMRI_NNUNET_VAL_ITERATIONS``; unset means nnU-Net's defaults.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from unimri.losses import UnifiedFocalLoss

from .sas import add_sas_gates

_BUDGET_VARS = {"num_epochs": "UNIMRI_NNUNET_EPOCHS", "num_iterations_per_epoch": "UNIMRI_NNUNET_ITERATIONS",
                "num_val_iterations_per_epoch": "UNIMRI_NNUNET_VAL_ITERATIONS"}


def deep_supervision_weights(num_outputs: int, ddp: bool = False) -> np.ndarray:
    """nnU-Net's weights of its deep-supervision outputs, highest resolution first:
    1/2**i, the lowest output weighted 0 (1e-6 under DDP without compile), normalised."""
    weights = np.array([1 / (2 ** i) for i in range(num_outputs)])
    weights[-1] = 1e-6 if ddp else 0.0
    return weights / weights.sum()


def _budget_from_env(trainer: nnUNetTrainer) -> None:
    for attr, var in _BUDGET_VARS.items():
        value = os.environ.get(var)
        if value:
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"{var}: expected a positive whole number, got {value!r}") from None
            if number < 1:
                raise ValueError(f"{var}: expected a positive whole number, got {value!r}")
            setattr(trainer, attr, number)


class nnUNetTrainerBudget(nnUNetTrainer):
    """nnU-Net's default trainer with the budget of ``UNIMRI_NNUNET_*`` (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _budget_from_env(self)


class nnUNetTrainerUnifiedFocal(nnUNetTrainerBudget):
    """nnU-Net with the asymmetric Unified Focal loss (fused kernel) and deep supervision."""

    unified_weight = 0.5  # λ, weight of the focal part
    unified_delta = 0.6  # δ, false-negative weight
    unified_gamma = 0.5  # γ, focal exponent

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise ValueError(
                f"{type(self).__name__}: region-based training (dataset.json 'regions_class_order') is not "
                f"supported: the Unified Focal loss is a softmax loss over mutually exclusive classes. Use "
                f"nnUNetTrainer for region-based tasks, or give dataset.json plain labels.")
        loss = UnifiedFocalLoss(weight=self.unified_weight, delta=self.unified_delta, gamma=self.unified_gamma,
                                batch=bool(self.configuration_manager.batch_dice),
                                ignore_index=self.label_manager.ignore_label)
        if self.enable_deep_supervision:
            weights = deep_supervision_weights(len(self._get_deep_supervision_scales()),
                                               ddp=self.is_ddp and not self._do_i_compile())
            loss = DeepSupervisionWrapper(loss, weights)
        return loss


class nnUNetTrainerUnifiedFocalSAS(nnUNetTrainerUnifiedFocal):
    """:class:`nnUNetTrainerUnifiedFocal` with SAS gates on the planned U-Net's skip connections."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)
        return add_sas_gates(network)
