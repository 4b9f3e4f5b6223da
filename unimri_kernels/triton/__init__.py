"""Triton kernels of the fused ops (one file per op) and their launchers."""
