"""Triton kernels, one fused op per file with its launcher (imported lazily)."""
