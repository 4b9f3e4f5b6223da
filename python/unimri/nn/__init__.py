"""Attention modules of unimri: the fused selective attention gate, the baselines, and
Oktay's blocks in plain PyTorch modules (``unimri.nn.plain``, the baseline for comparison).

Every module has ``forward(x, g=None) -> (out, attn_map)`` with ``out`` shaped like ``x``;
``g=None`` means self-gating (``g = x``).
"""
from unimri.nn.attention_gate import AttentionGate, SelectiveAttention
from unimri.nn.baselines import CBAM, ChannelAttention, SpatialAttention
from unimri.nn.plain import OktayAttentionGate, OktaySelectiveAttention
from unimri.nn.factory import ATTENTION_KINDS, create_attention
from unimri.nn.layers import NORM_NAMES, conv_nd, create_norm

__all__ = ["ATTENTION_KINDS", "AttentionGate", "CBAM", "ChannelAttention", "NORM_NAMES",
           "OktayAttentionGate", "OktaySelectiveAttention", "SelectiveAttention", "SpatialAttention",
           "conv_nd", "create_attention", "create_norm"]
