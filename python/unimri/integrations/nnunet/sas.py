"""Selective attention (SAS) gates on the skip connections of nnU-Net's U-Net decoder.

:func:`add_sas_gates` takes a network built by nnU-Net from its plans
(``dynamic_network_architectures``' ``PlainConvUNet`` or ``ResidualEncoderUNet``, 2D or
3D, any depth, anisotropic strides) and gates each skip connection with
:class:`unimri.nn.SelectiveAttention`, the gating signal being the decoder feature one
level coarser (before its transposed convolution), as in Oktay et al. 2018 and unimri's
own UNet. The gates' parameters live under ``decoder.skip_attention.<stage>`` so a
checkpoint of the gated network loads into a network built the same way (which is what
``nnUNetv2_predict`` does through the trainer's ``build_network_architecture``).
"""
from __future__ import annotations

import torch
from torch import nn

from unimri.nn.attention_gate import SelectiveAttention


def _norm_name(norm_op) -> str | None:
    name = getattr(norm_op, "__name__", "").lower()
    if "instance" in name:
        return "instance"
    if "batch" in name:
        return "batch"
    if "group" in name:
        return "group"
    return None


def _subsample(stride) -> int:
    """theta's kernel/stride for a level: 2 where the level halves every axis, else 1
    (an axis that is not downsampled, e.g. the slice axis of an anisotropic 3D plan, may be
    too short to subsample)."""
    values = [int(stride)] if isinstance(stride, int) else [int(s) for s in stride]
    return 2 if min(values) >= 2 else 1


def add_sas_gates(network: nn.Module, num_gates: int = 2, focal: float = 1.0) -> nn.Module:
    """Gate every skip connection of ``network.decoder`` (in place); returns ``network``.

    Args:
        network: an nnU-Net U-Net whose ``decoder`` is a ``UNetDecoder``.
        num_gates: parallel gates per skip (SAS; 1 gives plain Oktay gates).
        focal: exponent of the attention maps (see :class:`unimri.nn.AttentionGate`).

    Raises:
        ValueError when the network has no ``UNetDecoder`` to gate.
    """
    from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

    decoder = getattr(network, "decoder", None)
    if not isinstance(decoder, UNetDecoder):
        raise ValueError(f"network: SAS gates need nnU-Net's PlainConvUNet or ResidualEncoderUNet (a "
                         f"UNetDecoder), got {type(network).__name__} with decoder "
                         f"{type(decoder).__name__}")
    encoder = decoder.encoder
    channels = list(encoder.output_channels)
    spatial_dims = 3 if encoder.conv_op.__name__.lower().endswith("3d") else 2
    norm = _norm_name(encoder.norm_op)
    gates = []
    for s in range(len(decoder.stages)):
        gates.append(SelectiveAttention(channels[-(s + 2)], gating_channels=channels[-(s + 1)],
                                        spatial_dims=spatial_dims, num_gates=num_gates,
                                        subsample=_subsample(encoder.strides[-(s + 1)]), focal=focal, norm=norm))
    decoder.skip_attention = nn.ModuleList(gates).to(next(decoder.parameters()).device)
    decoder.__class__ = _gated_class(type(decoder))
    return network


_GATED: dict[type, type] = {}


def _gated_class(base: type) -> type:
    """``base`` (a UNetDecoder class) with a forward that gates the skips."""
    if base in _GATED or getattr(base, "_unimri_gated", False):
        return _GATED.get(base, base)

    class GatedUNetDecoder(base):
        _unimri_gated = True

        def forward(self, skips: list[torch.Tensor]):
            """skips: the encoder outputs, bottleneck last, (B, C_l, *S_l) each."""
            lres_input = skips[-1]
            seg_outputs = []
            for s in range(len(self.stages)):
                skip, _ = self.skip_attention[s](skips[-(s + 2)], lres_input)
                x = self.stages[s](torch.cat((self.transpconvs[s](lres_input), skip), 1))
                if self.deep_supervision:
                    seg_outputs.append(self.seg_layers[s](x))
                elif s == len(self.stages) - 1:
                    seg_outputs.append(self.seg_layers[-1](x))
                lres_input = x
            seg_outputs = seg_outputs[::-1]
            return seg_outputs if self.deep_supervision else seg_outputs[0]

    GatedUNetDecoder.__name__ = f"Gated{base.__name__}"
    GatedUNetDecoder.__qualname__ = GatedUNetDecoder.__name__
    _GATED[base] = GatedUNetDecoder
    return GatedUNetDecoder
