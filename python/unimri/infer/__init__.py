"""Inference with a trained checkpoint: predicting image files, scoring prediction files and
reading the attention gates' maps."""
from unimri.infer.attention import attention_maps
from unimri.infer.evaluate import evaluate_files
from unimri.infer.predict import load_trained_model, predict_path

__all__ = ["attention_maps", "evaluate_files", "load_trained_model", "predict_path"]
