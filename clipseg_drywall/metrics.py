"""Foreground IoU and Dice of binary masks: the one definition every score in the package uses.

Conventions (those of the drywall-QA literature, not `evaluate.load("mean_iou")`, which averages
the background class in):
- per-image IoU / Dice of the foreground; an image where prediction and ground truth are both
  empty scores 1 (nothing to find, nothing found);
- `miou` / `dice`: means of the per-image scores;
- `dataset_iou`: intersections and unions summed over all images first.

Everything is defined on pixel counts (intersection, predicted, target), so a score can be
computed from the per-image statistics of `scoring.py` without keeping any mask.
"""

from __future__ import annotations

import numpy as np


def as_bool(mask: np.ndarray) -> np.ndarray:
    """Foreground of a {0,1}, {0,255}, bool or probability mask (uint8 > 127, otherwise > 0.5)."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > (127 if mask.dtype == np.uint8 else 0.5)


def mask_counts(prediction: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """(intersection, predicted, target) foreground pixel counts of two same-shaped masks."""
    prediction, target = as_bool(prediction), as_bool(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    return int(np.logical_and(prediction, target).sum()), int(prediction.sum()), int(target.sum())


def iou(intersection, predicted, target) -> np.ndarray:
    """Per-image foreground IoU from counts (element-wise); 1 where both masks are empty."""
    intersection, predicted, target = (np.asarray(a, dtype=np.float64) for a in (intersection, predicted, target))
    union = predicted + target - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def dice(intersection, predicted, target) -> np.ndarray:
    """Per-image Dice from counts (element-wise); 1 where both masks are empty."""
    intersection, predicted, target = (np.asarray(a, dtype=np.float64) for a in (intersection, predicted, target))
    total = predicted + target
    return np.where(total > 0, 2.0 * intersection / np.maximum(total, 1), 1.0)


def dataset_iou(intersection, predicted, target) -> float:
    """Intersections over unions, each summed over the images first (1 if every mask is empty)."""
    inter = float(np.sum(intersection))
    union = float(np.sum(predicted)) + float(np.sum(target)) - inter
    return inter / union if union else 1.0


def scores_from_counts(intersection, predicted, target) -> dict[str, float]:
    """`miou`, `dice`, `dataset_iou` and `n_images` of per-image counts (1-D arrays, one per image)."""
    n = int(np.size(intersection))
    if n == 0:
        return {"miou": float("nan"), "dice": float("nan"), "dataset_iou": float("nan"), "n_images": 0}
    return {
        "miou": float(iou(intersection, predicted, target).mean()),
        "dice": float(dice(intersection, predicted, target).mean()),
        "dataset_iou": dataset_iou(intersection, predicted, target),
        "n_images": n,
    }


def iou_and_dice(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(IoU, Dice) of one pair of masks."""
    counts = mask_counts(prediction, target)
    return float(iou(*counts)), float(dice(*counts))
