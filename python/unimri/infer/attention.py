"""Attention maps of a model's gates, read by forward hooks during the model's own forward pass.

Every unimri attention module returns ``(out, attn)``; a forward hook on each one keeps its
``attn`` while the model runs as usual, so the maps are exactly what the network used. A
map is kept when it lies on a spatial grid (its spatial shape equals the module input's):
the SAS gates' α (B, K, *S_feature), an :class:`~unimri.nn.AttentionGate`'s α and the
spatial/CBAM maps; channel attention (B, C, 1, 1) has no spatial map and is left out.

Names, ordered from the finest feature grid to the coarsest: ``"<position>/gate<k>"`` per
gate ``k`` of a module with K maps (SAS), else ``"<position>"``; positions are the model's ``attentions`` keys (``skip_level0`` ... in a
UNet, ``aspp`` in DeepLabV3) or, for other models, module paths.

Each map is resampled to the input grid: a unimri backbone pads its input at the far end
to its stride, so a feature map covers the padded grid; it is interpolated linearly
(bilinear/trilinear, ``align_corners=False``) to the padded grid and cropped to the input,
the same geometry as the logits. Linear interpolation keeps values in [0, 1].
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import torch
from torch import nn

from unimri.runtime.inference import InferenceSpec, sliding_windows
from unimri.runtime.precision import autocast_for
from unimri.runtime.resize import resize, resize_logits


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{position name: module} of the model's attention modules, in creation order.

    unimri backbones keep them in ``model.attentions``; for other models every
    :class:`~unimri.nn.SelectiveAttention`/:class:`~unimri.nn.AttentionGate` not nested in
    another is taken, named by its module path.
    """
    held = getattr(model, "attentions", None)
    if isinstance(held, nn.ModuleDict):
        return dict(held.items())
    from unimri.nn import AttentionGate, SelectiveAttention

    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (SelectiveAttention, AttentionGate)) and \
                not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every forward of an attention module of ``model`` appends its
    spatial map (B, K, *S_feature), detached, to ``recorded[position]``; hooks are removed
    on exit."""
    recorded: dict[str, list[torch.Tensor]] = {}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            if not isinstance(output, tuple) or len(output) != 2:
                return
            x, attn = args[0], output[1]
            if isinstance(attn, torch.Tensor) and attn.shape[2:] == x.shape[2:]:
                recorded.setdefault(name, []).append(attn.detach())
        return hook

    for name, module in attention_modules(model).items():
        handles.append(module.register_forward_hook(hook_for(name)))
    try:
        yield recorded
    finally:
        for h in handles:
            h.remove()


def _model_grid(model: nn.Module, spatial: Sequence[int]) -> tuple[int, ...]:
    """The grid a unimri backbone runs an input of ``spatial`` size on (padded to its stride)."""
    from unimri.models.blocks import SegmentationModel, pad_to_multiple

    if not isinstance(model, SegmentationModel):
        return tuple(spatial)
    probe = torch.empty((1, 1, *spatial), device="meta")
    return tuple(pad_to_multiple(probe, model.stride, model.min_coarse_cells)[0].shape[2:])


def to_input_grid(maps: dict[str, list[torch.Tensor]], model: nn.Module,
                  spatial: Sequence[int]) -> dict[str, torch.Tensor]:
    """Recorded maps (one forward's: the last call of each module) -> {name: (B, 1, *spatial)}
    float32 on the input grid, ordered from the finest feature grid to the coarsest (see the
    module docstring for names and resampling)."""
    grid = _model_grid(model, spatial)
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    out: dict[str, torch.Tensor] = {}
    finest_first = sorted(maps.items(), key=lambda item: -item[1][-1][0, 0].numel())  # stable on ties
    for name, calls in finest_first:
        attn = resize_logits(calls[-1].float(), grid)[crop]
        if attn.shape[1] == 1:
            out[name] = attn.contiguous()
        else:
            for k in range(attn.shape[1]):
                out[f"{name}/gate{k}"] = attn[:, k:k + 1].contiguous()
    return out


@torch.no_grad()
def attention_maps(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each gate's attention map for ``batch`` (B, C, *S): {name: (B, 1, *S)} float32 in [0, 1].

    One ordinary forward of ``model`` (in its current train/eval mode) with hooks on its
    attention modules; empty for a model without attention. Names and resampling: see the
    module docstring.
    """
    if not isinstance(batch, torch.Tensor) or batch.dim() not in (4, 5):
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"batch: expected a tensor (B, C, H, W) or (B, C, D, H, W), got {shape}")
    with record_attention(model) as recorded:
        model(batch)
    return to_input_grid(recorded, model, batch.shape[2:])


def top_gate(maps: dict[str, torch.Tensor]) -> str | None:
    """The gate overlay figures show: the first name of :func:`attention_maps`' result (gate 0
    of the position on the finest feature grid, e.g. a UNet's ``skip_level0/gate0``)."""
    return next(iter(maps), None)


def file_safe(name: str) -> str:
    """A gate name as part of a file name: ``skip_level0/gate1`` -> ``skip_level0-gate1``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


@torch.no_grad()
def predict_with_attention(model: nn.Module, image: torch.Tensor, spec: InferenceSpec,
                           device: torch.device | str = "cpu", batch_size: int = 8, overlap: float = 0.5,
                           amp: str = "auto") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class probabilities (K, *S) and each gate's map {name: (*S)} for one normalised image
    (C, *S), from the same forward passes, float32 on the CPU.

    Applies the model as :func:`unimri.runtime.inference.predict_probabilities` does (2D:
    slice by slice along ``spec.slice_axis``; 3D: windows of ``spec.patch`` averaged over
    overlaps; each slice/window resized to the training size and back); the maps take the
    path of the probabilities (back to the native grid, averaged where windows overlap).
    """
    device = torch.device(device)
    if image.ndim - 1 not in (2, 3) or image.shape[0] != spec.in_channels:
        raise ValueError(f"image: expected ({spec.in_channels}, *S) with 2 or 3 spatial dims, "
                         f"got shape {tuple(image.shape)}")
    model.eval()
    image = image.float()
    spatial = tuple(image.shape[1:])
    ctx = autocast_for(device, amp)

    def run(batch: torch.Tensor, native: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = resize(batch.to(device), spec.input_size(batch.shape[2:]))
        with ctx, record_attention(model) as recorded:
            logits = model(x)
        maps = to_input_grid(recorded, model, x.shape[2:])
        probs = torch.softmax(resize_logits(logits.float(), native), dim=1).cpu()
        return probs, {n: resize_logits(m, native)[:, 0].cpu() for n, m in maps.items()}

    if spec.spatial_dims == 2:
        if len(spatial) == 2:
            probs, maps = run(image[None], spatial)
            return probs[0], {n: m[0] for n, m in maps.items()}
        axis = spec.slice_axis % 3
        slices = image.movedim(1 + axis, 0)  # (N, C, a, b)
        parts = [run(slices[i:i + batch_size], slices.shape[2:]) for i in range(0, slices.shape[0], batch_size)]
        probs = torch.cat([p for p, _ in parts]).movedim(0, 1 + axis)
        maps = {n: torch.cat([m[n] for _, m in parts]).movedim(0, axis) for n in parts[0][1]}
        return probs, maps
    if len(spatial) != 3:
        raise ValueError(f"image: a 3D model needs (C, D, H, W), got shape {tuple(image.shape)}")
    probs = torch.zeros((spec.num_classes, *spatial), dtype=torch.float32)
    maps: dict[str, torch.Tensor] = {}
    count = torch.zeros(spatial, dtype=torch.float32)
    for sl in sliding_windows(spatial, spec.patch or spatial, overlap):
        crop = image[(slice(None), *sl)][None]
        p, m = run(crop, crop.shape[2:])
        probs[(slice(None), *sl)] += p[0]
        for n, v in m.items():
            maps.setdefault(n, torch.zeros(spatial, dtype=torch.float32))[sl] += v[0]
        count[sl] += 1
    return probs / count, {n: v / count for n, v in maps.items()}
