"""Task metrics against hand-computed values; the segmentation loss ignores 255."""
import pytest
import torch

from repro.losses import create_loss
from repro.tasks import ClassificationTask, SegmentationTask


def test_classification_stats_use_the_mean_over_time():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 3.0]]])  # [T=2, B=2, K=2]
    targets = torch.tensor([0, 1])
    task = ClassificationTask()
    stats = task.sample_stats(logits, targets)
    mean = logits.mean(0)
    expected_ce = torch.nn.functional.cross_entropy(mean, targets, reduction="none")
    assert stats[:, 0].tolist() == [1.0, 1.0]  # mean logits: [0.5, 0] -> 0 and [0, 2] -> 1
    torch.testing.assert_close(stats[:, 1], expected_ce.double())
    assert task.finalize(stats.sum(0), 2) == pytest.approx({"loss": expected_ce.mean().item(), "accuracy": 100.0})


def test_segmentation_miou_by_hand():
    # 1 image 2x3, 3 classes; prediction from one-hot logits
    prediction = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    target = torch.tensor([[[0, 1, 1], [1, 2, 255]]])
    logits = torch.nn.functional.one_hot(prediction, 3).permute(0, 3, 1, 2).float() * 5
    task = SegmentationTask(num_classes=3)
    metrics = task.finalize(task.sample_stats(logits, target).sum(0), 1)
    # class 0: tp 1, fp 1, fn 0 -> 1/2; class 1: tp 2, fp 0, fn 1 -> 2/3; class 2: tp 1 (ignored pixel left out) -> 1
    assert metrics["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["accuracy"] == pytest.approx(100 * 4 / 5)


def test_dice_ce_ignores_255_pixels():
    loss = create_loss("dice_ce")
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    changed = target.clone()
    changed[:, :2] = 255
    value = loss(logits, changed)
    value.backward()
    assert torch.isfinite(value) and logits.grad[:, :, :2].abs().sum() == 0
