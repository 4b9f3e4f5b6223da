"""Integrations of unimri's loss and attention into other frameworks (nnU-Net v2)."""
