"""Training, evaluation and prediction with the paper's protocol.

* :class:`TrainConfig` — the protocol (SGD 1e-3/0.9/5e-4, batch 32, early stopping,
  5-fold CV, z-score, progressive resizing 128 -> 256 -> 512) as editable defaults.
* :func:`run_experiment` — k-fold training + evaluation into a run folder (resumable).
* :func:`evaluate_model`, :func:`predict_labels` — whole-case inference and metrics.
* :func:`run_study` — the paper's ablations (components, losses, attention) as tables.
* Multi-GPU / multi-node: launch the same command under ``torchrun``.
"""
from unimri.train.ablation import DEMO_VARIANTS, STUDIES, run_study, run_variants
from unimri.train.checkpoint import load_checkpoint, save_checkpoint
from unimri.train.config import TrainConfig
from unimri.train.engine import FoldTrainer, TrainingInterrupted, check_stage_sizes
from unimri.train.evaluate import METRIC_NAMES, EvalResult, evaluate_model, metric_table
from unimri.train.experiment import ExperimentResult, run_experiment
from unimri.train.predict import InferenceSpec, predict_labels, predict_probabilities
from unimri.train.resize import resize, resize_logits, soft_labels

__all__ = [
    "DEMO_VARIANTS", "STUDIES", "METRIC_NAMES", "TrainConfig", "FoldTrainer", "TrainingInterrupted",
    "ExperimentResult", "EvalResult", "InferenceSpec", "check_stage_sizes", "evaluate_model",
    "load_checkpoint", "metric_table", "predict_labels", "predict_probabilities", "resize",
    "resize_logits", "run_experiment", "run_study", "run_variants", "save_checkpoint", "soft_labels",
]
