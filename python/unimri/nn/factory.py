"""``create_attention``: an attention module by name, for the backbones' ``attention=`` option."""
from __future__ import annotations

import torch.nn as nn

from unimri.nn.attention_gate import AttentionGate, SelectiveAttention
from unimri.nn.baselines import CBAM, ChannelAttention, SpatialAttention

#: Names accepted by :func:`create_attention` besides ``None`` ("gate" is also accepted:
#: a single :class:`AttentionGate`).
ATTENTION_KINDS = ("sas", "spatial", "channel", "cbam")
_GATED = {"sas": SelectiveAttention, "gate": AttentionGate}
_BASELINES = {"spatial": SpatialAttention, "channel": ChannelAttention, "cbam": CBAM}


def create_attention(kind: str | None, in_channels: int, gating_channels: int | None = None,
                     spatial_dims: int = 2, **kw) -> nn.Module | None:
    """Attention module ``kind`` for ``in_channels`` inputs, or ``None`` for ``kind=None``/"none".

    "sas" -> :class:`SelectiveAttention`, "gate" -> :class:`AttentionGate` (both take
    ``gating_channels`` and ``**kw`` such as ``subsample``, ``focal``, ``norm``,
    ``num_gates``); "spatial", "channel", "cbam" -> the baselines, which attend from ``x``
    alone: ``gating_channels`` and ``norm`` do not apply to them and are dropped.
    Every module has ``forward(x, g=None) -> (out, attn_map)``.
    """
    if kind is None or kind == "none":
        return None
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str or None, got {type(kind).__name__}")
    key = kind.lower()
    if key in _GATED:
        return _GATED[key](in_channels, gating_channels, spatial_dims=spatial_dims, **kw)
    if key in _BASELINES:
        kw.pop("norm", None)
        return _BASELINES[key](in_channels, spatial_dims=spatial_dims, **kw)
    raise ValueError(f"kind must be None or one of {ATTENTION_KINDS + ('gate',)}, got {kind!r}")
