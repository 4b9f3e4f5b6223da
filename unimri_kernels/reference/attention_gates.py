"""Pure-PyTorch reference of ``unimri::attention_gates``: Gn grid attention gates on the same
``(x, g)`` (selective attention), each exactly :func:`attention_gate_reference` with its own
parameters. Ground truth of the stacked op (float64-capable)."""
from __future__ import annotations

import torch

from unimri_kernels.reference.attention_gate import attention_gate_reference


def attention_gates_reference(x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor, phi_weight: torch.Tensor,
                              phi_bias: torch.Tensor, psi_weight: torch.Tensor, psi_bias: torch.Tensor,
                              subsample: int = 2, focal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, alpha)``: y (Gn, B, Cx, *S) with ``y[k] = alpha[:, k] * x``, alpha (B, Gn, *S).

    Parameters are those of Gn gates stacked along a leading dimension: theta_weight
    (Gn, Ci, Cx, s, ..., s), phi_weight (Gn, Ci, Cg), phi_bias (Gn, Ci), psi_weight (Gn, Ci),
    psi_bias (Gn,). Differentiable with plain autograd.
    """
    ys, alphas = zip(*(attention_gate_reference(x, g, theta_weight[k], phi_weight[k], phi_bias[k],
                                                psi_weight[k], psi_bias[k:k + 1], subsample, focal)
                       for k in range(theta_weight.shape[0])))
    return torch.stack(ys), torch.cat(alphas, dim=1)
