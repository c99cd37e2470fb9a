"""What a task measures: per-sample statistics that are summed (training) or gathered across
processes without duplicates (evaluation), then turned into metrics.

- classification: outputs are per-step logits [T, B, K]; the prediction is the argmax of the mean
  over T; metrics: loss (CE of the mean logits), top-1 accuracy (%).
- segmentation: outputs are logits [B, K, H, W] (the model averages over T); masks [B, H, W] with
  ``ignore_index`` (255) pixels left out everywhere; metrics: loss (pixel CE), pixel accuracy (%),
  mIoU (%) = mean over the classes that occur (in prediction or target) of tp / (tp + fp + fn), with
  tp, fp, fn from segmentation-models-pytorch's ``get_stats``, summed over the whole test set; also the
  per-class IoU (%) (None for a class in neither prediction nor target).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class ClassificationTask:
    primary = "test_accuracy"

    def sample_stats(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """[B, 2]: correct (0/1), CE of the mean logits."""
        mean_logits = outputs.detach().float().mean(0)
        correct = (mean_logits.argmax(-1) == targets).double()
        return torch.stack([correct, F.cross_entropy(mean_logits, targets, reduction="none").double()], 1)

    def finalize(self, sums: Tensor, count: int) -> dict:
        correct, loss = sums.tolist()
        return {"loss": loss / max(count, 1), "accuracy": 100.0 * correct / max(count, 1)}


class SegmentationTask:
    primary = "test_miou"

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def sample_stats(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """[B, 3 + 3K]: summed pixel CE, valid pixels, correct pixels, then tp, fp, fn per class."""
        from segmentation_models_pytorch.metrics import get_stats

        logits = outputs.detach().float()
        valid = targets != self.ignore_index
        ce = F.cross_entropy(logits, targets, ignore_index=self.ignore_index, reduction="none").sum((1, 2))
        predictions = logits.argmax(1)
        correct = ((predictions == targets) & valid).sum((1, 2))
        tp, fp, fn, _ = get_stats(predictions, targets, mode="multiclass", num_classes=self.num_classes,
                                  ignore_index=self.ignore_index)
        per_pixel = torch.stack([ce.double(), valid.sum((1, 2)).double(), correct.double()], 1)
        return torch.cat([per_pixel, tp.double(), fp.double(), fn.double()], 1)

    def finalize(self, sums: Tensor, count: int) -> dict:
        k = self.num_classes
        ce, valid, correct = sums[:3].tolist()
        tp, fp, fn = sums[3:3 + k], sums[3 + k:3 + 2 * k], sums[3 + 2 * k:]
        union = tp + fp + fn
        present = union > 0
        iou = tp / union.clamp(min=1)
        miou = iou[present].mean().item() if present.any() else 0.0
        per_class = [100.0 * v if p else None for v, p in zip(iou.tolist(), present.tolist())]
        return {"loss": ce / max(valid, 1), "accuracy": 100.0 * correct / max(valid, 1), "miou": 100.0 * miou,
                "iou_per_class": per_class}


def task_for(dataset) -> ClassificationTask | SegmentationTask:
    if getattr(dataset, "modality", "static") == "segmentation":
        return SegmentationTask(dataset.num_classes, getattr(dataset, "ignore_index", 255))
    return ClassificationTask()
