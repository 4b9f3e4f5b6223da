"""Pure-PyTorch reference of the grid attention gate (Oktay et al. 2018; the paper's eq. 1).

Ground truth for the fused ``unimri::attention_gate`` op (float64-capable). With
``d`` = 2 or 3 spatial dimensions, ``s`` = subsample and ``f`` = focal exponent::

    theta = conv(x, W_theta, stride=s)               # (B, Ci, *Sc), Sc = floor(S / s)
    phi   = conv1x1(g, W_phi) + b_phi                # (B, Ci, *Sg)
    phi   = interpolate(phi, Sc)                     # only if Sg != Sc
    q     = psi . relu(theta + phi) + b_psi          # (B, 1, *Sc)
    a     = sigmoid(q) ** f                          # coarse attention
    alpha = interpolate(a, S)                        # (B, 1, *S), only if Sc != S
    y     = alpha * x                                # (B, Cx, *S)

``interpolate`` is ``F.interpolate(..., mode="bilinear" | "trilinear",
align_corners=False)``. Because its weights sum to one, resampling ``phi`` equals
applying the 1x1 conv (bias included) to the resampled ``g``; the fused kernels use that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

INTERP_MODES = {2: "bilinear", 3: "trilinear"}


def interp_mode(spatial_dims: int) -> str:
    """``F.interpolate`` mode of the gate for 2D (bilinear) or 3D (trilinear) inputs."""
    return INTERP_MODES[spatial_dims]


def coarse_shape(spatial: tuple[int, ...] | torch.Size, subsample: int) -> tuple[int, ...]:
    """Grid of ``theta x`` for input grid ``spatial``: a kernel = stride = s conv, no padding."""
    return tuple(int(n) // subsample for n in spatial)


def resample(t: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """``t`` (B, C, *S) resampled to ``size`` with bi/trilinear, align_corners=False
    (identity, no copy, when the grids already match)."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode=interp_mode(t.dim() - 2), align_corners=False)


def _conv(spatial_dims: int):
    return F.conv2d if spatial_dims == 2 else F.conv3d


def attention_gate_coarse(x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor, phi_weight: torch.Tensor,
                          phi_bias: torch.Tensor, psi_weight: torch.Tensor, psi_bias: torch.Tensor,
                          subsample: int, focal: float) -> torch.Tensor:
    """Coarse attention ``sigmoid(q) ** f`` of shape (B, 1, *Sc) (see the module docstring).

    Shapes: x (B, Cx, *S), g (B, Cg, *Sg), theta_weight (Ci, Cx, s, ..., s),
    phi_weight (Ci, Cg), phi_bias (Ci,), psi_weight (Ci,), psi_bias (1,).
    """
    d = x.dim() - 2
    conv = _conv(d)
    ci, cg = phi_weight.shape
    ones = (1,) * d
    theta = conv(x, theta_weight, stride=subsample)
    phi = conv(g, phi_weight.reshape(ci, cg, *ones), phi_bias)
    pre = theta + resample(phi, theta.shape[2:])
    q = conv(torch.relu(pre), psi_weight.reshape(1, ci, *ones), psi_bias.reshape(1))
    a = torch.sigmoid(q)
    return a if focal == 1.0 else a.pow(focal)


def attention_gate_reference(x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor, phi_weight: torch.Tensor,
                             phi_bias: torch.Tensor, psi_weight: torch.Tensor, psi_bias: torch.Tensor,
                             subsample: int = 2, focal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated input ``y = alpha * x`` (B, Cx, *S) and attention ``alpha`` (B, 1, *S) in [0, 1].

    Differentiable with plain autograd; computes in the dtype of its inputs.
    """
    a = attention_gate_coarse(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                              subsample, focal)
    alpha = resample(a, x.shape[2:])
    return alpha * x, alpha
