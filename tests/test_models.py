"""Tests of unimri.models: every backbone x 2D/3D x attention option on odd input sizes,
gradients into the attention modules, train/eval, determinism, torch.compile, bad input."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from unimri.models import ATTENTION_OPTIONS, MODEL_NAMES, NORM_NAMES, DeepLabV3, create_model
from unimri.models.blocks import bilinear_kernel, conv_transpose_cls, crop_to, pad_to_multiple

ODD_SHAPES = {2: (97, 131), 3: (37, 45, 29)}
SMALL_SHAPES = {2: (37, 23), 3: (19, 13, 21)}
WIDTH = 4


def _build(name: str, spatial_dims: int, attention: str | None, norm: str = "batch", **kw):
    return create_model(name, spatial_dims=spatial_dims, in_channels=2, num_classes=3, features=WIDTH,
                        norm=norm, attention=attention, **kw)


def _loss(logits: torch.Tensor) -> torch.Tensor:
    target = torch.arange(logits[:, 0].numel()).remainder(logits.shape[1]).reshape(logits[:, 0].shape)
    return F.cross_entropy(logits, target)


COMBOS = list(itertools.product(MODEL_NAMES, (2, 3), ATTENTION_OPTIONS))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,spatial_dims,attention", COMBOS,
                         ids=[f"{n}-{d}d-{a}" for n, d, a in COMBOS])
def test_shape_and_gradients(name, spatial_dims, attention):
    # rotate the norm over the combinations so each norm meets each model and attention kind
    norm = NORM_NAMES[COMBOS.index((name, spatial_dims, attention)) % len(NORM_NAMES)]
    model = _build(name, spatial_dims, attention, norm)
    # the large odd sizes once per model and dim (no attention) and for SAS in 2D; smaller odd sizes otherwise
    large = attention is None or (attention == "sas" and spatial_dims == 2)
    shape = ODD_SHAPES[spatial_dims] if large else SMALL_SHAPES[spatial_dims]
    x = torch.randn((2, 2) + shape)
    logits = model(x)
    assert logits.shape == (2, 3) + shape
    assert torch.isfinite(logits).all()
    _loss(logits).backward()
    if attention is None:
        assert len(model.attentions) == 0
        return
    assert len(model.attentions) > 0
    for module in model.attentions:
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reaches {type(module).__name__}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_eval_and_determinism(name):
    shape = SMALL_SHAPES[2]
    torch.manual_seed(7)
    first = _build(name, 2, "sas")
    torch.manual_seed(7)
    second = _build(name, 2, "sas")
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn((2, 2) + shape)
    outs = []
    for model in (first, second):
        torch.manual_seed(3)  # same dropout masks
        model.train()
        outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    bn = [m for m in first.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(int(m.num_batches_tracked) >= 1 for m in bn)  # running stats updated
    first.eval()
    with torch.no_grad():
        a, b = first(x), first(x[:1])
    assert a.shape == (2, 3) + shape
    # eval mode: a case does not depend on its batch (up to float32 kernel choice per batch size)
    torch.testing.assert_close(a[:1], b, rtol=1e-3, atol=1e-3 * float(a.abs().max()))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_compile_fullgraph_no_graph_breaks(name):
    """Dynamo traces each model with SAS as one graph (fullgraph=True raises on any break),
    forward and backward (AOT autograd); "aot_eager" skips inductor's C++ code generation,
    which costs minutes per model on this CPU and is not where graph breaks come from."""
    model = _build(name, 2, "sas")
    x = torch.randn(2, 2, 37, 23)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)  # same dropout masks in both runs
    out = compiled(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    _loss(out).backward()
    grads = [p.grad for p in model.attentions.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_deeplab_output_stride_8_and_bad_stride():
    model = DeepLabV3(spatial_dims=3, in_channels=1, num_classes=2, features=WIDTH, output_stride=8, attention="cbam")
    x = torch.randn(2, 1, 11, 17, 9)
    assert model(x).shape == (2, 2, 11, 17, 9)
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        DeepLabV3(output_stride=32)


def test_pad_crop_round_trip_and_bilinear_init():
    x = torch.randn(1, 2, 5, 7, 3)
    padded, spatial = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8, 4) and spatial == (5, 7, 3)
    assert torch.equal(crop_to(padded, spatial), x)
    assert pad_to_multiple(padded, 4)[0] is padded
    # a single coarse cell in all would break normalisation: the last dim gets two
    assert pad_to_multiple(torch.randn(1, 1, 3, 4), 4)[0].shape == (1, 1, 4, 8)
    # the FCN's transposed convs start as bilinear upsampling: a constant stays constant inside
    up = conv_transpose_cls(2)(2, 2, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(2, 4, 2))
        out = up(torch.ones(1, 2, 6, 6))
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.ones_like(out[..., 1:-1, 1:-1]))


def test_create_model_names_and_bad_arguments():
    assert set(MODEL_NAMES) == {"unet", "fcn", "rcnn", "segnet", "deeplabv3"}
    assert type(create_model("UNet", features=WIDTH)).__name__ == "UNet"
    with pytest.raises(ValueError, match="model name must be one of"):
        create_model("vnet")
    for name in MODEL_NAMES:
        with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
            create_model(name, spatial_dims=1)
        with pytest.raises(ValueError, match="attention must be one of"):
            create_model(name, attention="self")
        with pytest.raises(ValueError, match="norm must be one of"):
            create_model(name, norm="layer")
        with pytest.raises(ValueError, match="features must be a positive int"):
            create_model(name, features=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_input_tensor(name):
    model = _build(name, 2, None)
    assert model(torch.randn(1, 2, 3, 5)).shape == (1, 3, 3, 5)  # tiny inputs and batch 1 work too
    with pytest.raises(ValueError, match=r"in_channels=2 channels .* got shape \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"spatial_dims=2, got shape \(1, 2, 8, 8, 8\)"):
        model(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 2, 8, 8, dtype=torch.long))
