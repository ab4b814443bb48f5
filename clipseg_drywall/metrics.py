"""Foreground IoU and Dice for binary masks: the one definition every score in the package uses.

Conventions (those of the drywall-QA literature, not `evaluate.load("mean_iou")`, which averages
the background class in):
- per-image IoU / Dice of the foreground; an image where prediction and ground truth are both
  empty scores 1 (nothing to find, nothing found);
- `miou` / `dice`: means of the per-image scores;
- `dataset_iou`: intersections and unions summed over all images first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > (127 if mask.dtype == np.uint8 else 0.5)


def iou_and_dice(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float, int, int]:
    """(IoU, Dice, intersection, union) of two same-shaped binary masks ({0,1}, {0,255} or bool)."""
    prediction, target = _as_bool(prediction), _as_bool(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    intersection = int(np.logical_and(prediction, target).sum())
    union = int(np.logical_or(prediction, target).sum())
    total = int(prediction.sum()) + int(target.sum())
    if union == 0:
        return 1.0, 1.0, 0, 0
    return intersection / union, 2.0 * intersection / total, intersection, union


@dataclass
class SegmentationScores:
    """Accumulates per-image scores for one task."""

    ious: list[float] = field(default_factory=list)
    dices: list[float] = field(default_factory=list)
    intersection: int = 0
    union: int = 0

    def add(self, prediction: np.ndarray, target: np.ndarray) -> float:
        iou, dice, intersection, union = iou_and_dice(prediction, target)
        self.ious.append(iou)
        self.dices.append(dice)
        self.intersection += intersection
        self.union += union
        return iou

    def compute(self) -> dict[str, float]:
        n = len(self.ious)
        return {
            "miou": float(np.mean(self.ious)) if n else float("nan"),
            "dice": float(np.mean(self.dices)) if n else float("nan"),
            "dataset_iou": self.intersection / self.union if self.union else 1.0,
            "n_images": n,
        }
