"""Inference with a trained checkpoint: predicting image files and scoring prediction files."""
from unimri.infer.evaluate import evaluate_files
from unimri.infer.predict import load_trained_model, predict_path

__all__ = ["evaluate_files", "load_trained_model", "predict_path"]
