"""unimri.losses modules: conventions, identities, agreement with MONAI and torch, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unimri.losses import (LOSS_NAMES, AsymmetricFocalLoss, AsymmetricFocalTverskyLoss, ComboLoss,
                           CrossEntropyLoss, DiceFocalLoss, DiceLoss, FocalLoss, FocalTverskyLoss,
                           TverskyLoss, UnifiedFocalLoss, create_loss)
from unimri_kernels.dispatch import available_backends, use_backend

BACKENDS = available_backends("cpu")


def _data(shape=(2, 3, 13, 11), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=dtype) * 2
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    return x, t


def _naive_unified(x, t, weight=0.5, delta=0.6, gamma=0.5, symmetric=False):
    """DESIGN.md's formulas written directly (one-hot, softmax, per-sample, then mean)."""
    p = torch.softmax(x, 1)
    y = F.one_hot(t, x.shape[1]).movedim(-1, 1).to(x.dtype)
    dims = tuple(range(2, x.dim()))
    ce = -y * torch.log(p)
    focal = torch.zeros(x.shape[0], dtype=x.dtype)
    for c in range(x.shape[1]):
        term = ce[:, c]
        if c == 0:
            term = (1 - delta) * (1 - p[:, c]) ** gamma * term
        else:
            term = delta * ((1 - p[:, c]) ** gamma if symmetric else 1) * term
        focal = focal + term.flatten(1).mean(1)
    tp = (p * y).sum(dims)
    fn = ((1 - p) * y).sum(dims)
    fp = (p * (1 - y)).sum(dims)
    mti = (tp + 1e-6) / (tp + delta * fn + (1 - delta) * fp + 1e-6)
    ft = torch.stack([(1 - mti[:, c]) if (c == 0 and not symmetric) else (1 - mti[:, c]) ** (1 - gamma)
                      for c in range(x.shape[1])], 1).mean(1)
    return (weight * focal + (1 - weight) * ft).mean()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("symmetric", [False, True])
@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), weight=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
       dims=st.sampled_from([(9, 7), (5, 3, 4)]), classes=st.integers(2, 4))
def test_unified_matches_design_formula(backend, symmetric, seed, weight, dims, classes):
    x, t = _data((2, classes, *dims), seed)
    with use_backend(backend):
        got = UnifiedFocalLoss(weight=weight, symmetric=symmetric)(x, t)
    torch.testing.assert_close(got, _naive_unified(x, t, weight=weight, symmetric=symmetric), rtol=1e-9, atol=1e-12)


def test_identities_gamma0_delta_half():
    x, t = _data()
    ce = F.cross_entropy(x, t)
    torch.testing.assert_close(UnifiedFocalLoss(weight=1.0, delta=0.5, gamma=0.0)(x, t), 0.5 * ce)
    dice = DiceLoss(smooth=0.0)(x, t)
    torch.testing.assert_close(UnifiedFocalLoss(weight=0.0, delta=0.5, gamma=0.0, smooth=0.0)(x, t), dice)
    torch.testing.assert_close(AsymmetricFocalLoss(delta=0.5, gamma=0.0)(x, t), 0.5 * ce)
    torch.testing.assert_close(UnifiedFocalLoss(weight=0.5)(x, t),
                               0.5 * AsymmetricFocalLoss()(x, t) + 0.5 * AsymmetricFocalTverskyLoss()(x, t))


@pytest.mark.parametrize("spatial", [(12, 10), (6, 5, 7)])
def test_agrees_with_torch(spatial):
    x, t = _data((2, 3, *spatial), seed=1)
    torch.testing.assert_close(CrossEntropyLoss()(x, t), F.cross_entropy(x, t))
    # torch averages over every valid pixel of the batch: that is unimri's batch=True
    torch.testing.assert_close(CrossEntropyLoss(ignore_index=2, batch=True)(x, t),
                               F.cross_entropy(x, t, ignore_index=2))
    torch.testing.assert_close(CrossEntropyLoss(reduction="none")(x, t),
                               F.cross_entropy(x, t, reduction="none").flatten(1).mean(1))


@pytest.mark.parametrize("spatial", [(12, 10), (6, 5, 7)])
def test_agrees_with_monai(spatial):
    monai_losses = pytest.importorskip("monai.losses")
    x, t = _data((2, 3, *spatial), seed=1)
    t1 = t.unsqueeze(1)
    torch.testing.assert_close(
        TverskyLoss(alpha=0.3, beta=0.7)(x, t),
        monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)(x, t1))
    torch.testing.assert_close(DiceLoss()(x, t), monai_losses.DiceLoss(softmax=True, to_onehot_y=True)(x, t1))
    torch.testing.assert_close(
        DiceLoss(include_background=False)(x, t),
        monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=False)(x, t1))
    torch.testing.assert_close(DiceLoss(batch=True)(x, t),
                               monai_losses.DiceLoss(softmax=True, to_onehot_y=True, batch=True)(x, t1))
    # MONAI's FocalLoss averages over classes too: ours sums over classes per pixel.
    torch.testing.assert_close(FocalLoss(gamma=2.0)(x, t) / 3,
                               monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)(x, t1).double(),
                               rtol=1e-6, atol=1e-7)  # MONAI computes this one in fp32


def test_binary_sigmoid_and_multilabel_conventions():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 8, 9, generator=gen, dtype=torch.float64)
    fg = torch.rand(3, 1, 8, 9, generator=gen) > 0.7
    # C = 1 is the two-class view [1 − σ(z), σ(z)]; index, bool and float masks agree.
    two = torch.cat([torch.zeros_like(x), x], 1)
    ref = UnifiedFocalLoss()(two, fg[:, 0].long())
    torch.testing.assert_close(UnifiedFocalLoss()(x, fg.float()), ref)
    torch.testing.assert_close(UnifiedFocalLoss()(x, fg[:, 0]), ref)
    torch.testing.assert_close(UnifiedFocalLoss()(x, fg.long()), ref)
    # Multi-label: the mean of independent binary problems.
    xm = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    tm = (torch.rand(2, 3, 6, 5, generator=gen) > 0.5).float()
    per = torch.stack([DiceLoss(reduction="none")(xm[:, c:c + 1], tm[:, c:c + 1]) for c in range(3)], 1)
    torch.testing.assert_close(DiceLoss(sigmoid=True, reduction="none")(xm, tm), per.mean(1))
    torch.testing.assert_close(DiceLoss(sigmoid=True, batch=True)(xm, tm),
                               torch.stack([DiceLoss(batch=True)(xm[:, c:c + 1], tm[:, c:c + 1]) for c in range(3)]).mean())


def test_binary_sigmoid_dice_equals_monai_two_channel_softmax_dice():
    monai_losses = pytest.importorskip("monai.losses")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 8, 9, generator=gen, dtype=torch.float64)
    fg = torch.rand(3, 1, 8, 9, generator=gen) > 0.7
    two = torch.cat([torch.zeros_like(x), x], 1)
    torch.testing.assert_close(DiceLoss()(x, fg.float()),
                               monai_losses.DiceLoss(softmax=True, to_onehot_y=True)(two, fg.long()))


def test_target_forms_agree_and_ignore_index():
    x, t = _data((2, 4, 10, 6), seed=3)
    onehot = F.one_hot(t, 4).movedim(-1, 1).double()
    for loss in (UnifiedFocalLoss(), DiceLoss(), FocalLoss(), ComboLoss()):
        a = loss(x, t)
        torch.testing.assert_close(loss(x, t.unsqueeze(1)), a)
        torch.testing.assert_close(loss(x, onehot), a)
        torch.testing.assert_close(loss(x, t.unsqueeze(1).double()), a)
    t_ign = t.clone()
    t_ign[:, :3] = 255
    keep = torch.ones_like(t, dtype=torch.bool)
    keep[:, :3] = False
    # ignoring = dropping those pixels: compare against the loss on the kept pixels only
    x_kept = x.permute(0, 2, 3, 1)[keep].reshape(2, -1, 4).permute(0, 2, 1)
    t_kept = t[keep].reshape(2, -1)
    for loss_cls in (UnifiedFocalLoss, TverskyLoss, CrossEntropyLoss):
        torch.testing.assert_close(loss_cls(ignore_index=255)(x, t_ign), loss_cls()(x_kept, t_kept))


def test_reductions_and_shapes():
    x, t = _data((3, 3, 7, 7), seed=4)
    per = UnifiedFocalLoss(reduction="none")(x, t)
    assert per.shape == (3,)
    torch.testing.assert_close(UnifiedFocalLoss(reduction="mean")(x, t), per.mean())
    torch.testing.assert_close(UnifiedFocalLoss(reduction="sum")(x, t), per.sum())
    assert UnifiedFocalLoss(reduction="none", batch=True)(x, t).shape == (1,)
    for i in range(3):  # each sample's loss depends on that sample only
        torch.testing.assert_close(UnifiedFocalLoss(reduction="none")(x[i:i + 1], t[i:i + 1])[0], per[i])


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_trains_and_respects_grad(name):
    x, t = _data((2, 3, 9, 8), seed=5)
    x.requires_grad_()
    loss = create_loss(name)(x, t)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    ref = x.detach().clone().requires_grad_()
    with use_backend("reference"):
        create_loss(name)(ref, t).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-9, atol=1e-12)


def test_component_losses_match_definitions():
    x, t = _data((2, 3, 8, 8), seed=6)
    p = torch.softmax(x, 1)
    y = F.one_hot(t, 3).movedim(-1, 1).double()
    tp, fn, fp = (p * y).sum((2, 3)), ((1 - p) * y).sum((2, 3)), (p * (1 - y)).sum((2, 3))
    ti = (tp + 1e-5) / (tp + 0.3 * fp + 0.7 * fn + 1e-5)
    torch.testing.assert_close(FocalTverskyLoss()(x, t), ((1 - ti) ** 0.75).mean())
    dice = 1 - (2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5)
    ce = F.cross_entropy(x, t)
    torch.testing.assert_close(ComboLoss(weight=0.3)(x, t), 0.3 * ce + 0.7 * dice.mean())
    focal = (-(1 - p) ** 2 * torch.log(p) * y).sum(1).mean((1, 2)).mean()
    torch.testing.assert_close(DiceFocalLoss(lambda_dice=0.5, lambda_focal=2.0)(x, t), 0.5 * dice.mean() + 2 * focal)


def test_low_precision_loss_is_fp32_and_close():
    x, t = _data((2, 3, 16, 16), seed=7, dtype=torch.float32)
    ref = UnifiedFocalLoss()(x.double(), t)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        xl = x.to(dtype).requires_grad_()
        out = UnifiedFocalLoss()(xl, t)
        out.backward()
        assert out.dtype == torch.float32 and xl.grad.dtype == dtype
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_non_finite_logits_policy():
    x, t = _data((1, 3, 5, 5), seed=8)
    x[0, 0, 0, 0] = float("nan")
    assert torch.isnan(UnifiedFocalLoss()(x, t))
    with pytest.raises(ValueError, match="NaN or Inf"):
        UnifiedFocalLoss(check_finite=True)(x, t)


@pytest.mark.parametrize("make,match,exc", [
    (lambda x, t: (x, t[:, :-1]), "does not match input", ValueError),
    (lambda x, t: (x, t + 3), "outside", ValueError),
    (lambda x, t: (x, t - 1), "outside", ValueError),
    (lambda x, t: (x.long(), t), "floating point", TypeError),
    (lambda x, t: (x, t.double() + 0.5), "non-integer", ValueError),
    (lambda x, t: (x, F.one_hot(t, 3).movedim(-1, 1).double() * 2), r"\[0, 1\]", ValueError),
    (lambda x, t: (x[:, :, 0, 0], t[:, 0, 0]), "spatial", ValueError),
    (lambda x, t: (x, t.to("meta")), "same device", ValueError),
    (lambda x, t: (x, t.numpy()), "torch.Tensor", TypeError),
])
def test_bad_input_errors_name_the_argument(make, match, exc):
    x, t = _data((2, 3, 6, 6), seed=9)
    a, b = make(x, t)
    with pytest.raises(exc, match=match):
        UnifiedFocalLoss()(a, b)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="reduction"):
        UnifiedFocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="delta"):
        UnifiedFocalLoss(delta=1.5)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("lovasz")
    with pytest.raises(ValueError, match="weight has 2 entries"):
        CrossEntropyLoss(weight=[1.0, 2.0])(*_data((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="common_class"):
        UnifiedFocalLoss(common_class=5)(*_data((1, 3, 4, 4)))
    assert isinstance(create_loss("Focal-Tversky"), FocalTverskyLoss)
