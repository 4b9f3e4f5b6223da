"""Training with the paper's protocol.

* :class:`TrainConfig` — the protocol (SGD 1e-3/0.9/5e-4, batch 32, early stopping,
  5-fold CV, z-score, progressive resizing 128 -> 256 -> 512) as editable defaults.
* :func:`run_experiment` — nested k-fold training + test-fold evaluation into a run folder
  (resumable).
* :func:`evaluate_model`, :func:`predict_labels` — whole-case inference and metrics
  (from :mod:`unimri.runtime`; file prediction is :mod:`unimri.infer`).
* :func:`run_study` — the paper's ablations, from :mod:`unimri.studies` (loaded on first use).
* Multi-GPU / multi-node: launch the same command under ``torchrun``.
"""
from unimri.runtime.inference import InferenceSpec, predict_labels, predict_probabilities
from unimri.runtime.resize import resize, resize_logits, soft_labels
from unimri.runtime.scoring import METRIC_NAMES, EvalResult, evaluate_model, metric_table
from unimri.train.checkpoint import load_checkpoint, save_checkpoint
from unimri.train.config import TrainConfig
from unimri.train.engine import FoldTrainer, TrainingInterrupted, check_stage_sizes
from unimri.train.experiment import ExperimentResult, run_experiment

_STUDY_NAMES = ("DEMO_VARIANTS", "STUDIES", "run_study", "run_variants")


def __getattr__(name: str):
    # the studies sit above training; their names stay reachable here without training importing them
    if name in _STUDY_NAMES:
        from unimri.studies import ablation

        return getattr(ablation, name)
    raise AttributeError(f"module 'unimri.train' has no attribute {name!r}")


__all__ = [
    "DEMO_VARIANTS", "STUDIES", "METRIC_NAMES", "TrainConfig", "FoldTrainer", "TrainingInterrupted",
    "ExperimentResult", "EvalResult", "InferenceSpec", "check_stage_sizes", "evaluate_model",
    "load_checkpoint", "metric_table", "predict_labels", "predict_probabilities", "resize",
    "resize_logits", "run_experiment", "run_study", "run_variants", "save_checkpoint", "soft_labels",
]
