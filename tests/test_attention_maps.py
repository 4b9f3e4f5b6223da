"""Attention maps: the hook helper (names, shapes, values, resampling) and `predict --save-attention`
(files with the prediction's shape and geometry holding the gates' α for the same input)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LazyModule

from unimri.cli import main
from unimri.infer.attention import attention_maps, predict_with_attention, top_gate
from unimri.infer.predict import attention_path, predict_path
from unimri.models import MODEL_NAMES, create_model
from unimri.models.blocks import pad_to_multiple
from unimri.runtime.inference import InferenceSpec, predict_probabilities
from unimri.train.checkpoint import save_checkpoint

nib = LazyModule("nibabel")
pytestmark = pytest.mark.usefixtures("one_thread")

AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.9, 0.1, 4.0], [0, 0, 2.5, 7.5], [0, 0, 0, 1]])


def _model(name: str = "unet", spatial_dims: int = 2, attention: str | None = "sas", seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, spatial_dims=spatial_dims, features=4, attention=attention).eval()


def _alphas_by_hand(model, x):
    """{position: α (B, K, *S_feature)} captured with hooks written here, not the helper's."""
    seen = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out[1].detach()))
               for n, m in model.attentions.items()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("spatial", [(37, 29), (13, 19, 10)])
def test_maps_are_each_gates_alpha_on_the_input_grid(name, spatial):
    model = _model(name, len(spatial))
    x = torch.randn(2, 1, *spatial)
    maps = attention_maps(model, x)
    alphas = _alphas_by_hand(model, x)
    n_gates = {n: a.shape[1] for n, a in alphas.items()}
    assert sorted(maps) == sorted(f"{n}/gate{k}" for n, k_max in n_gates.items() for k in range(k_max))
    # finest feature grid first: the top gate is gate 0 of the position with the most cells
    finest = max(alphas, key=lambda n: alphas[n][0, 0].numel())
    assert top_gate(maps) == f"{finest}/gate0"
    # a backbone pads its input to its stride: α covers the padded grid, resampled there and cropped
    padded = pad_to_multiple(x, model.stride, model.min_coarse_cells)[0].shape[2:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    for n, alpha in alphas.items():
        want = F.interpolate(alpha, size=padded, mode=mode, align_corners=False)[crop]
        for k in range(alpha.shape[1]):
            got = maps[f"{n}/gate{k}"]
            assert got.shape == (2, 1, *spatial) and got.dtype == torch.float32
            assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
            torch.testing.assert_close(got, want[:, k:k + 1], atol=1e-6, rtol=0)


def test_finest_map_of_a_unet_is_alpha_itself_without_resampling():
    model = _model("unet")
    x = torch.randn(1, 1, 32, 48)  # a multiple of the stride: level 0 runs on the input grid
    alpha = _alphas_by_hand(model, x)["skip_level0"]
    maps = attention_maps(model, x)
    assert torch.equal(maps["skip_level0/gate0"], alpha[:, :1])
    assert torch.equal(maps["skip_level0/gate1"], alpha[:, 1:2])


def test_models_without_spatial_maps_give_none_and_bad_batches_are_refused():
    assert attention_maps(_model(attention=None), torch.randn(1, 1, 32, 32)) == {}
    assert attention_maps(_model(attention="channel"), torch.randn(1, 1, 32, 32)) == {}  # (B, C, 1, 1) maps
    assert sorted(attention_maps(_model(attention="cbam"), torch.randn(1, 1, 32, 32))) == [
        "skip_level0", "skip_level1", "skip_level2", "skip_level3"]
    with pytest.raises(ValueError, match="batch: expected a tensor"):
        attention_maps(_model(), torch.randn(1, 32, 32))


def _checkpoint(tmp_path, model, inference: InferenceSpec, spec_kwargs: dict) -> str:
    path = str(tmp_path / "model.pt")
    save_checkpoint(path, {"model_spec": {"name": "unet", "kwargs": spec_kwargs},
                           "inference": inference.to_dict(), "model": model.state_dict()})
    return path


def test_predict_with_attention_gives_the_same_probabilities_as_predict():
    model = _model("unet", 3)
    spec = InferenceSpec(3, (16, 16, 16), 2, 1, patch=(16, 16, 8), normalize="none")
    image = torch.randn(1, 20, 18, 11)
    probs, maps = predict_with_attention(model, image, spec)
    torch.testing.assert_close(probs, predict_probabilities(model, image, spec), atol=1e-6, rtol=0)
    assert len(maps) == 8 and all(m.shape == (20, 18, 11) for m in maps.values())
    assert all(0 <= float(m.min()) and float(m.max()) <= 1 for m in maps.values())


def test_save_attention_writes_the_gates_alpha_with_the_inputs_geometry(tmp_path, capsys):
    model = _model("unet", 2)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "features": 4, "attention": "sas"}
    # the training size equals the slices' size and no normalisation: the file holds the model's own α
    ckpt = _checkpoint(tmp_path, model, InferenceSpec(2, (32, 24), 2, 1, normalize="none"), kwargs)
    data = np.random.default_rng(0).normal(0, 1, (32, 24, 3)).astype(np.float32)
    src, dst = str(tmp_path / "scan.nii.gz"), str(tmp_path / "seg.nii.gz")
    nib.save(nib.Nifti1Image(data, AFFINE), src)
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--save-attention",
                 "--no-progress"]) == 0
    slices = torch.from_numpy(np.moveaxis(data, -1, 0))[:, None]  # slice_axis -1: (Z, 1, X, Y)
    want = attention_maps(model, slices)
    assert len(want) == 8
    for name, alpha in want.items():
        path = attention_path(dst, name)
        assert path == str(tmp_path / f"seg_attn-{name.replace('/', '-')}.nii.gz")
        img = nib.load(path)
        assert img.shape == data.shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
        got = np.asarray(img.dataobj)
        assert got.min() >= 0 and got.max() <= 1
        np.testing.assert_allclose(got, np.moveaxis(alpha[:, 0].numpy(), 0, -1), atol=1e-6, rtol=0)
    # the labels are those of a plain predict
    plain = str(tmp_path / "plain.nii.gz")
    predict_path(ckpt, src, plain, progress=False)
    assert np.array_equal(np.asarray(nib.load(dst).dataobj), np.asarray(nib.load(plain).dataobj))
    # existing maps are refused without --overwrite, and nothing is rewritten
    os.remove(dst)
    before = os.path.getmtime(attention_path(dst, "skip_level0/gate0"))
    assert main(["predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--save-attention",
                 "--no-progress"]) == 2
    assert "attention map" in capsys.readouterr().err and not os.path.exists(dst)
    assert os.path.getmtime(attention_path(dst, "skip_level0/gate0")) == before


def test_save_attention_3d_sliding_window_and_a_model_without_gates(tmp_path):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "num_classes": 2, "features": 4, "attention": "sas"}
    model = _model("unet", 3)
    # one window covering the volume at the training size: the maps are the model's α
    ckpt = _checkpoint(tmp_path, model, InferenceSpec(3, (16, 16, 8), 2, 1, patch=(16, 16, 8),
                                                      normalize="none"), kwargs)
    data = np.random.default_rng(1).normal(0, 1, (16, 16, 8)).astype(np.float32)
    src = str(tmp_path / "vol.nii")
    nib.save(nib.Nifti1Image(data, AFFINE), src)
    written = predict_path(ckpt, src, str(tmp_path / "vol_seg.nii"), progress=False, save_attention=True)
    assert len(written) == 1 + 8
    want = attention_maps(model, torch.from_numpy(data)[None, None])
    for name, alpha in want.items():
        img = nib.load(attention_path(str(tmp_path / "vol_seg.nii"), name))
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
        np.testing.assert_allclose(np.asarray(img.dataobj), alpha[0, 0].numpy(), atol=1e-6, rtol=0)
    plain = _model("unet", 3, attention=None)
    ckpt2 = str(tmp_path / "plain.pt")
    save_checkpoint(ckpt2, {"model_spec": {"name": "unet", "kwargs": {**kwargs, "attention": None}},
                            "inference": InferenceSpec(3, (16, 16, 8), 2, 1).to_dict(),
                            "model": plain.state_dict()})
    with pytest.raises(ValueError, match="save_attention: the checkpoint's model has no attention"):
        predict_path(ckpt2, src, str(tmp_path / "x_seg.nii"), progress=False, save_attention=True)
    assert not os.path.exists(tmp_path / "x_seg.nii")


def test_save_attention_png_is_8_bit_alpha(tmp_path):
    from PIL import Image

    model = _model("unet", 2)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "features": 4, "attention": "sas"}
    ckpt = _checkpoint(tmp_path, model, InferenceSpec(2, (24, 32), 2, 1, normalize="none"), kwargs)
    pixels = np.random.default_rng(2).integers(0, 256, (24, 32)).astype(np.uint8)
    src = str(tmp_path / "photo.png")
    Image.fromarray(pixels).save(src)
    predict_path(ckpt, src, str(tmp_path / "photo_seg.png"), progress=False, save_attention=True)
    want = attention_maps(model, torch.from_numpy(pixels.astype(np.float32))[None, None])
    for name, alpha in want.items():
        got = np.asarray(Image.open(attention_path(str(tmp_path / "photo_seg.png"), name)))
        assert got.shape == pixels.shape and got.dtype == np.uint8
        # round(255 α): at most half a grey level from the gate's α
        np.testing.assert_allclose(got / 255.0, alpha[0, 0].numpy(), atol=0.5 / 255 + 1e-6, rtol=0)
