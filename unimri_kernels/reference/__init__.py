"""Pure-PyTorch references (float64-capable): the ground truth of the tests."""
