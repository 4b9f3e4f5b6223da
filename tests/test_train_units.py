"""unimri.train building blocks: soft-label resizing, config checks, the distributed batch
sampler, atomic checkpoints, stage-size checks and the sliding window."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimri.train import TrainConfig, check_stage_sizes, resize, soft_labels
from unimri._atomic import atomic_write_text
from unimri.train.checkpoint import capture_rng, check_model_spec, load_checkpoint, restore_rng, save_checkpoint
from unimri.train.distributed import ShardedBatchSampler
from unimri.runtime.inference import sliding_windows


# ---------------------------------------------------------------- soft label resizing
def test_small_lesion_survives_downsampling_as_soft_target():
    label = torch.zeros(1, 64, 64, dtype=torch.long)
    label[0, 10, 37] = 1  # a one-pixel lesion
    soft = soft_labels(label, 2, (16, 16))
    nearest = torch.nn.functional.interpolate(label[:, None].float(), size=(16, 16), mode="nearest")
    assert nearest.sum() == 0  # what resizing the integer map loses
    assert soft.shape == (1, 2, 16, 16)
    # the lesion's area is kept: 1 pixel of 64x64 = 1/16 of one 16x16 pixel
    assert torch.isclose(soft[0, 1].sum(), torch.tensor(1 / 16))
    assert soft[0, 1, 2, 9] == pytest.approx(1 / 16)
    assert torch.allclose(soft.sum(1), torch.ones(1, 16, 16))


@settings(max_examples=25)
@given(h=st.integers(3, 40), w=st.integers(3, 40), oh=st.integers(2, 48), ow=st.integers(2, 48),
       classes=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_soft_labels_are_distributions_and_never_lose_a_class(h, w, oh, ow, classes, seed):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (2, h, w), generator=g)
    soft = soft_labels(label, classes, (oh, ow))
    assert soft.shape == (2, classes, oh, ow)
    assert torch.allclose(soft.sum(1), torch.ones(2, oh, ow), atol=1e-5)
    assert soft.min() >= -1e-6 and soft.max() <= 1 + 1e-6
    present_in = torch.stack([(label == c).flatten(1).any(1) for c in range(classes)], 1)
    present_out = soft.flatten(2).amax(2) > 0
    assert torch.equal(present_in, present_out)  # a class in the input survives the resize
    if h % oh == 0 and w % ow == 0:  # integer shrink factors: class fractions are exact
        frac_in = torch.stack([(label == c).float().mean((1, 2)) for c in range(classes)], 1)
        assert torch.allclose(soft.mean((2, 3)), frac_in, atol=1e-5)


def test_resize_3d_and_identity_and_errors():
    x = torch.randn(1, 2, 8, 10, 12)
    assert resize(x, (8, 10, 12)) is x
    assert resize(x, (4, 20, 6)).shape == (1, 2, 4, 20, 6)
    with pytest.raises(ValueError, match="size"):
        resize(x, (4, 4))
    with pytest.raises(TypeError, match="floating"):
        resize(x.long(), (4, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        soft_labels(torch.tensor([[0, 3]]), 2)


# ---------------------------------------------------------------- configuration
def test_config_defaults_are_the_papers_protocol():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.folds) == (1e-3, 0.9, 5e-4, 32, 5)
    assert cfg.stage_sizes == [(128, 128), (256, 256), (512, 512)]
    assert cfg.normalize == "zscore" and cfg.patience >= 1
    cfg3 = TrainConfig(spatial_dims=3, stages=["32x32x16", 64], batch_size=[4, 2], epochs=[3, 5])
    assert cfg3.stage_sizes == [(32, 32, 16), (64, 64, 64)]
    assert cfg3.stage_batch_sizes == [4, 2] and cfg3.stage_epochs == [3, 5]


@pytest.mark.parametrize("changes, match", [
    ({"model": "resnet9000"}, "model: unknown model 'resnet9000'"),
    ({"loss": "hinge"}, "loss: unknown loss 'hinge'"),
    ({"attention": "magic"}, "attention: unknown attention 'magic'"),
    ({"dataset": "no-such-dataset"}, "dataset: 'no-such-dataset' is neither"),
    ({"stages": ["64x64x64"]}, r"stages\[0\]: expected 2 positive sizes"),
    ({"batch_size": [4, 2]}, "batch_size: expected one value or 3"),
    ({"folds": 1}, "folds: expected >= 2"),
    ({"fold_indices": [5]}, "fold_indices"),
    ({"schedule": "sometimes"}, "schedule"),
    ({"momentum": 1.5}, "momentum"),
])
def test_config_rejects_bad_values_with_named_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes).validate()


def test_config_round_trip_and_unknown_keys():
    cfg = TrainConfig(stages=[32, 64], loss_kwargs={"delta": 0.7})
    assert TrainConfig.from_dict(cfg.to_dict()) == TrainConfig.from_dict(cfg.to_dict())
    assert TrainConfig.from_dict(cfg.to_dict()).stage_sizes == [(32, 32), (64, 64)]
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"learning_rate": 0.1})


# ---------------------------------------------------------------- distributed sampler
@settings(max_examples=30)
@given(n=st.integers(1, 40), batch=st.integers(1, 9), world=st.integers(1, 4), epoch=st.integers(0, 3))
def test_sharded_batches_reassemble_the_single_process_batches(n, batch, world, epoch):
    single = ShardedBatchSampler(n, batch, 0, 1, shuffle=True, seed=3, drop_last=True)
    single.set_epoch(epoch)
    shards = []
    for rank in range(world):
        s = ShardedBatchSampler(n, batch, rank, world, shuffle=True, seed=3, drop_last=True)
        s.set_epoch(epoch)
        shards.append(list(s))
    assert len({len(b) for b in shards}) == 1  # every rank takes part in every step
    for step, reference in enumerate(single.global_batches()):
        if len(reference) < world:
            continue
        merged = sorted(i for rank in range(world) for i in shards[rank][step])
        assert merged == sorted(reference)


def test_validation_sampler_covers_every_item_once():
    seen = []
    for rank in range(3):
        seen += [i for b in ShardedBatchSampler(10, 4, rank, 3, shuffle=False, drop_last=False) for i in b]
    assert sorted(seen) == list(range(10))


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_is_atomic_and_tagged(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, {"model_spec": {"name": "unet", "kwargs": {"features": 4}}, "x": torch.ones(2)})
    assert [p for p in os.listdir(tmp_path)] == ["c.pt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode
    state = load_checkpoint(path)
    assert state["format"] == "unimri-checkpoint" and torch.equal(state["x"], torch.ones(2))
    atomic_write_text(str(tmp_path / "junk.pt"), "not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"weights": 1}, str(tmp_path / "foreign.pt"))
    with pytest.raises(ValueError, match="not a unimri checkpoint"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    with pytest.raises(ValueError, match="another model.*name 'unet' != 'fcn'"):
        check_model_spec(state["model_spec"], {"name": "fcn", "kwargs": {"features": 4}})


def test_rng_capture_restore_reproduces_draws():
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(2))
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ---------------------------------------------------------------- stage sizes, windows
def test_stage_sizes_all_backbones_take_are_accepted():
    from unimri.models import MODEL_NAMES, create_model

    for name in MODEL_NAMES:  # the backbones pad internally: odd and tiny sizes are fine
        check_stage_sizes(create_model(name, features=4), 1, 2, [(17, 9), (64, 64)], name, [1, 2])


def test_stage_size_a_model_cannot_take_is_a_clear_error():
    # pooling by 4 cannot run on 3x3 inputs; unpadded 3x3 convolutions shrink the output
    too_small = torch.nn.Sequential(torch.nn.MaxPool2d(4), torch.nn.Conv2d(1, 2, 1), torch.nn.Upsample(scale_factor=4))
    with pytest.raises(ValueError, match=r"stages: model 'plain' cannot take input size \(3, 3\) at batch size 2"):
        check_stage_sizes(too_small, 1, 2, [(16, 16), (3, 3)], "plain", [2, 2])
    shrinking = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 3))
    with pytest.raises(ValueError, match=r"maps input size \(16, 16\) to output shape \(2, 2, 12, 12\)"):
        check_stage_sizes(shrinking, 1, 2, [(16, 16)], "plain", [2])
    # a normalisation layer that needs more than one value per channel at batch size 1
    pooled = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2),
                                 torch.nn.Upsample(size=(8, 8)))
    check_stage_sizes(pooled, 1, 2, [(8, 8)], "pooled", [2])
    with pytest.raises(ValueError, match="at batch size 1.*more than 1 value per channel"):
        check_stage_sizes(pooled, 1, 2, [(8, 8)], "pooled", [1])


def test_sliding_windows_cover_the_volume():
    shape, window = (20, 9, 33), (8, 16, 10)
    count = np.zeros(shape)
    for sl in sliding_windows(shape, window, 0.5):
        count[sl] += 1
        assert all(s.stop - s.start == min(w, n) for s, w, n in zip(sl, window, shape))
    assert count.min() >= 1
