"""Tests of unimri.metrics: hand-computed cases, identities, MONAI agreement, empty cases, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimri.metrics import (METRIC_NAMES, SegmentationMetrics, average_surface_distance, compute_dice, compute_iou,
                            compute_precision, compute_recall, compute_specificity, confusion_counts,
                            hausdorff_distance_95, metric_from_counts)



def _monai_metrics():
    """MONAI's metrics module, or skip this test (MONAI is an optional peer)."""
    return pytest.importorskip("monai.metrics")


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


# --- hand-computed -------------------------------------------------------------------------

def test_confusion_counts_hand_computed():
    # 1 x 2 x 3 image, binary; pred/target chosen so that TP=2, FP=1, FN=1, TN=2 for class 1.
    pred = torch.tensor([[[1, 1, 1], [0, 0, 0]]])
    target = torch.tensor([[[1, 1, 0], [1, 0, 0]]])
    counts = confusion_counts(pred, target, num_classes=2)
    assert counts.shape == (1, 2, 4)
    assert counts[0, 1].tolist() == [2, 1, 2, 1]  # TP, FP, TN, FN
    assert counts[0, 0].tolist() == [2, 1, 2, 1]  # class 0 mirrors class 1 in a binary task
    kw = dict(num_classes=2, include_background=False)
    assert compute_iou(pred, target, **kw).item() == pytest.approx(2 / 4)
    assert compute_dice(pred, target, **kw).item() == pytest.approx(4 / 6)
    assert compute_precision(pred, target, **kw).item() == pytest.approx(2 / 3)
    assert compute_recall(pred, target, **kw).item() == pytest.approx(2 / 3)
    assert compute_specificity(pred, target, **kw).item() == pytest.approx(2 / 3)


def test_three_class_hand_computed_and_label_map_layouts():
    pred = torch.tensor([[[0, 1, 2, 2]]])  # (B=1, H=1, W=4)
    target = torch.tensor([[[0, 1, 1, 2]]])
    dice = compute_dice(pred, target, num_classes=3)
    assert dice[0].tolist() == pytest.approx([1.0, 2 / 3, 2 / 3])
    iou = compute_iou(pred, target, num_classes=3)
    assert iou[0].tolist() == pytest.approx([1.0, 0.5, 0.5])
    # MONAI's (B, 1, *S) label maps and one-hot inputs give the same counts
    as_b1 = confusion_counts(pred[:, None], target[:, None], num_classes=3)
    as_one_hot = confusion_counts(_one_hot(pred, 3), _one_hot(target, 3))
    assert torch.equal(as_b1, confusion_counts(pred, target, 3))
    assert torch.equal(as_one_hot, as_b1)


def test_paper_swap_is_not_followed():
    """The paper's eq. 13 gives IoU the Dice formula; unimri's IoU is TP/(TP+FP+FN)."""
    counts = torch.tensor([[3, 1, 10, 2]])
    assert metric_from_counts("iou", counts).item() == pytest.approx(3 / 6)
    assert metric_from_counts("dice", counts).item() == pytest.approx(6 / 9)


@settings(max_examples=40)
@given(
    tp=st.integers(0, 10_000), fp=st.integers(0, 10_000), fn=st.integers(0, 10_000), tn=st.integers(0, 10_000)
)
def test_dice_iou_identity(tp, fp, fn, tn):
    counts = torch.tensor([[tp, fp, tn, fn]])
    iou = metric_from_counts("iou", counts, ignore_empty=False).item()
    dice = metric_from_counts("dice", counts, ignore_empty=False).item()
    assert dice == pytest.approx(2 * iou / (1 + iou), abs=1e-12)
    assert 0.0 <= iou <= dice <= 1.0


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(2, 17), w=st.integers(2, 17), c=st.integers(2, 4))
def test_dice_iou_identity_on_label_maps(seed, h, w, c):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randint(0, c, (3, h, w), generator=g), torch.randint(0, c, (3, h, w), generator=g)
    iou = compute_iou(pred, target, c, ignore_empty=False)
    dice = compute_dice(pred, target, c, ignore_empty=False)
    torch.testing.assert_close(dice, 2 * iou / (1 + iou))


# --- empty cases -----------------------------------------------------------------------------

def test_empty_target_and_prediction():
    empty = torch.zeros(1, 4, 5, dtype=torch.long)
    full = torch.ones(1, 4, 5, dtype=torch.long)
    kw = dict(num_classes=2, include_background=False)
    # target empty: NaN with ignore_empty, else 1 if prediction empty too, 0 if not
    assert math.isnan(compute_dice(empty, empty, **kw).item())
    assert compute_dice(empty, empty, ignore_empty=False, **kw).item() == 1.0
    assert compute_dice(full, empty, ignore_empty=False, **kw).item() == 0.0
    assert compute_iou(empty, empty, ignore_empty=False, **kw).item() == 1.0
    # empty prediction, non-empty target: overlap 0, precision 0 (nothing right), recall 0
    for fn in (compute_dice, compute_iou, compute_precision, compute_recall):
        assert fn(empty, full, **kw).item() == 0.0
    # specificity of an all-foreground target has no negatives: 1 when matched exactly
    assert compute_specificity(full, full, **kw).item() == 1.0


def test_empty_cases_agree_with_monai():
    monai_metrics = _monai_metrics()
    y = torch.zeros(2, 2, 6, 7)
    y[:, 0] = 1
    y_pred = y.clone()
    y_pred[1, 1, 2:4, 2:4] = 1
    y_pred[1, 0, 2:4, 2:4] = 0
    for ignore_empty in (True, False):
        ours = compute_dice(y_pred, y, ignore_empty=ignore_empty)
        theirs = monai_metrics.compute_dice(y_pred, y, ignore_empty=ignore_empty)
        torch.testing.assert_close(ours.float(), theirs, equal_nan=True)
        ours = compute_iou(y_pred, y, ignore_empty=ignore_empty)
        theirs = monai_metrics.compute_iou(y_pred, y, ignore_empty=ignore_empty)
        torch.testing.assert_close(ours.float(), theirs, equal_nan=True)


def test_surface_metrics_empty_cases():
    empty = torch.zeros(1, 9, 9, dtype=torch.long)
    blob = empty.clone()
    blob[0, 3:6, 3:6] = 1
    assert math.isnan(hausdorff_distance_95(empty, empty, num_classes=2).item())
    assert math.isinf(hausdorff_distance_95(empty, blob, num_classes=2).item())
    assert math.isinf(average_surface_distance(blob, empty, num_classes=2).item())
    assert hausdorff_distance_95(blob, blob, num_classes=2).item() == 0.0


# --- MONAI agreement on random masks ----------------------------------------------------------

def _random_masks(seed: int, shape: tuple[int, ...], classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Blobby label maps: smoothed noise, thresholded, so surfaces are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        noise = torch.rand((2, classes) + shape, generator=g)
        pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
        smooth = pool(noise, 3, stride=1, padding=1)
        out.append(smooth.argmax(1))
    return out[0], out[1]


@pytest.mark.parametrize("shape", [(23, 31), (11, 13, 9)])
def test_overlap_agrees_with_monai(shape):
    monai_metrics = _monai_metrics()
    pred, target = _random_masks(1, shape)
    p1, t1 = _one_hot(pred, 3), _one_hot(target, 3)
    for include_background in (True, False):
        torch.testing.assert_close(
            compute_dice(pred, target, 3, include_background=include_background).float(),
            monai_metrics.compute_dice(p1, t1, include_background=include_background),
        )
        torch.testing.assert_close(
            compute_iou(pred, target, 3, include_background=include_background).float(),
            monai_metrics.compute_iou(p1, t1, include_background=include_background),
        )
    cm = monai_metrics.get_confusion_matrix(p1, t1)
    assert torch.equal(confusion_counts(pred, target, 3), cm.long())


@pytest.mark.parametrize(
    "shape,spacing", [((23, 31), None), ((23, 31), (0.7, 1.9)), ((13, 11, 9), (1.0, 2.0, 0.5))]
)
def test_surface_distances_agree_with_monai(shape, spacing):
    monai_metrics = _monai_metrics()
    pred, target = _random_masks(2, shape)
    p1, t1 = _one_hot(pred, 3), _one_hot(target, 3)
    ours = hausdorff_distance_95(pred, target, 3, spacing=spacing)
    theirs = monai_metrics.compute_hausdorff_distance(p1, t1, percentile=95, spacing=spacing)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)
    ours = hausdorff_distance_95(pred, target, 3, spacing=spacing, percentile=100)
    theirs = monai_metrics.compute_hausdorff_distance(p1, t1, spacing=spacing)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)
    ours = average_surface_distance(pred, target, 3, spacing=spacing)
    theirs = monai_metrics.compute_average_surface_distance(p1, t1, symmetric=True, spacing=spacing)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)


def test_hausdorff_hand_computed_with_spacing():
    # two single-pixel objects 4 rows apart; rows 2 mm, columns 1 mm -> 8 mm
    pred = torch.zeros(1, 9, 5, dtype=torch.long)
    target = pred.clone()
    pred[0, 1, 2] = 1
    target[0, 5, 2] = 1
    assert hausdorff_distance_95(pred, target, 2, spacing=(2.0, 1.0)).item() == pytest.approx(8.0)
    assert average_surface_distance(pred, target, 2, spacing=(2.0, 1.0)).item() == pytest.approx(8.0)


# --- cumulative object ------------------------------------------------------------------------

def test_cumulative_matches_functions_and_accepts_logits():
    pred, target = _random_masks(3, (15, 17))
    logits = _one_hot(pred, 3) * 5.0 - 2.0
    metric = SegmentationMetrics(3, metrics=METRIC_NAMES)
    metric(logits[:1], target[:1])
    metric(pred[1:], _one_hot(target[1:], 3))  # label-map prediction, one-hot target
    out = metric.aggregate()
    assert out["num_cases"] == 2
    dice = compute_dice(pred, target, 3, include_background=False)
    torch.testing.assert_close(out["dice_per_case"], dice)
    torch.testing.assert_close(out["dice_per_class"], dice.mean(0))
    assert out["dice"] == pytest.approx(dice.mean().item())
    torch.testing.assert_close(out["dice_std_per_class"], dice.std(0, unbiased=False))
    counts = confusion_counts(pred, target, 3)[:, 1:].sum((0, 1))
    assert out["dice_micro"] == pytest.approx((2 * counts[0] / (2 * counts[0] + counts[1] + counts[3])).item())
    hd = hausdorff_distance_95(pred, target, 3)
    torch.testing.assert_close(out["hd95_per_case"], hd)
    metric.reset()
    with pytest.raises(RuntimeError, match="before any batch"):
        metric.aggregate()


def test_cumulative_ignore_empty_and_binary_logits():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1  # case 1 has no foreground
    logits = torch.full((2, 1, 8, 8), -3.0)
    logits[0, 0, 2:5, 2:5] = 3.0
    metric = SegmentationMetrics(2, ignore_empty=True, metrics=("dice", "recall", "hd95"))
    batch = metric(logits, target)
    assert batch["dice"][0].item() == 1.0 and math.isnan(batch["dice"][1].item())
    out = metric.aggregate()
    assert out["dice"] == 1.0 and out["recall"] == 1.0 and out["hd95"] == 0.0
    strict = SegmentationMetrics(2, ignore_empty=False, metrics=("dice",))
    strict(logits, target)
    assert strict.aggregate()["dice_per_case"][:, 0].tolist() == [1.0, 1.0]


# --- bad input --------------------------------------------------------------------------------

def test_bad_input_messages():
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="num_classes is required"):
        compute_dice(a, a)
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 1\]"):
        compute_dice(a + 2, a, num_classes=2)
    with pytest.raises(ValueError, match="same shape"):
        compute_dice(a, torch.zeros(1, 4, 5, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="3 channels"):
        compute_dice(torch.zeros(1, 2, 4, 4), a, num_classes=3)
    with pytest.raises(TypeError, match="y_pred must be a torch.Tensor"):
        compute_iou(np.zeros((1, 4, 4)), a, num_classes=2)
    with pytest.raises(ValueError, match="spacing must have 2 entries"):
        hausdorff_distance_95(a, a, 2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance_95(a, a, 2, percentile=101)
    with pytest.raises(ValueError, match="metric name"):
        metric_from_counts("jaccard", torch.zeros(1, 4))
    with pytest.raises(ValueError, match="metrics must be"):
        SegmentationMetrics(2, metrics=("dice", "f1"))
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SegmentationMetrics(1)
    with pytest.raises(ValueError, match="num_classes=3 channels"):
        SegmentationMetrics(3)(torch.zeros(1, 2, 4, 4), a)
