"""Pure-PyTorch references of the fused ops (float64-capable ground truth for tests)."""
