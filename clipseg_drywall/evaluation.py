"""Scoring at native resolution: logits -> per-image masks -> per-task IoU / Dice.

Used by the Trainer's evaluation, the learning test and `benchmarks/`; the metric definitions
themselves are `metrics.py`'s. A row of `image_statistics` is one image's numbers, small enough
to gather across DDP processes:
`[task_id, negative, iou, dice, intersection, union, predicted_fraction]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .losses import label_sizes
from .metrics import SegmentationScores, iou_and_dice
from .modeling import segmentation_logits, upsample_logits
from .prompts import TASKS

STATISTICS = ("task_id", "negative", "iou", "dice", "intersection", "union", "predicted_fraction")


def native_probabilities(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Sigmoid of the logits upsampled to each label's native (unpadded) size."""
    return [
        upsample_logits(logit[None].float(), size)[0].sigmoid()
        for logit, size in zip(logits, label_sizes(labels))
    ]


def image_statistics(
    probabilities: Sequence[torch.Tensor],
    labels: torch.Tensor,
    task_ids: torch.Tensor,
    negative: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """One `STATISTICS` row per image (float64), predictions thresholded at `threshold`."""
    rows = []
    for probability, label, task_id, is_negative in zip(probabilities, labels, task_ids, negative):
        height, width = probability.shape
        prediction = (probability > threshold).cpu().numpy()
        target = (label[:height, :width] == 1).cpu().numpy()
        iou, dice, intersection, union = iou_and_dice(prediction, target)
        rows.append([int(task_id), float(is_negative), iou, dice, intersection, union, float(prediction.mean())])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, len(STATISTICS))


def summarize(statistics: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Per-task metrics of gathered `image_statistics` rows.

    `iou_<task>` / `dice_<task>`: per-image means on positive pairs (metrics.py conventions);
    `dataset_iou_<task>`; `mean_iou` / `mean_dice`: means over the tasks present (the model
    selection metric); `wrong_prompt_foreground_<task>`: mean predicted foreground fraction on
    that task's images under the other task's prompt (negative pairs), when there are any.
    """
    statistics = np.asarray(statistics, dtype=np.float64).reshape(-1, len(STATISTICS))
    metrics: dict[str, float] = {}
    ious, dices = [], []
    for task_id, task in enumerate(TASKS):
        of_task = statistics[:, 0] == task_id
        positive = statistics[of_task & (statistics[:, 1] == 0)]
        negative = statistics[of_task & (statistics[:, 1] == 1)]
        if len(positive):
            scores = SegmentationScores(
                ious=positive[:, 2].tolist(),
                dices=positive[:, 3].tolist(),
                intersection=int(positive[:, 4].sum()),
                union=int(positive[:, 5].sum()),
            ).compute()
            metrics[f"iou_{task}"] = scores["miou"]
            metrics[f"dice_{task}"] = scores["dice"]
            metrics[f"dataset_iou_{task}"] = scores["dataset_iou"]
            metrics[f"predicted_fraction_{task}"] = float(positive[:, 6].mean())
            ious.append(scores["miou"])
            dices.append(scores["dice"])
        if len(negative):
            metrics[f"wrong_prompt_foreground_{task}"] = float(negative[:, 6].mean())
    if ious:
        metrics["mean_iou"] = float(np.mean(ious))
        metrics["mean_dice"] = float(np.mean(dices))
    return metrics


@torch.no_grad()
def predict_batch(model, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Native-resolution probabilities of one collated batch (no gradients, model's device)."""
    device = next(model.parameters()).device
    logits = segmentation_logits(
        model,
        batch["pixel_values"].to(device),
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        train_encoder=False,
    )
    return native_probabilities(logits, batch["labels"].to(device))


def evaluate_rows(
    model,
    collate,
    rows: Iterable[dict],
    thresholds: Sequence[float] = (0.5,),
    batch_size: int = 8,
) -> dict[float, torch.Tensor]:
    """`image_statistics` of `rows` (collated by `collate`) at each threshold, in one pass of the model.

    For scripts and tests on one process; the Trainer shards and gathers its own evaluation.
    """
    model.eval()
    rows = list(rows)
    out: dict[float, list[torch.Tensor]] = {t: [] for t in thresholds}
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        probabilities = predict_batch(model, batch)
        for t in thresholds:
            out[t].append(image_statistics(probabilities, batch["labels"], batch["task_ids"], batch["negative"], t))
    return {t: torch.cat(v) for t, v in out.items()}
