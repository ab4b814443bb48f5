"""The one scoring path: logits -> native-size probabilities -> per-image statistics -> per-task scores.

The Trainer's evaluation, `evaluate.py`, the learning test and every benchmark score through here;
`metrics.py` holds the definitions. A row of `ImageStatistics` is one (image, prompt) pair: its task,
whether the prompt names the other task (a negative pair, scored against an empty mask), its pixel
and target-foreground counts, and, for each threshold, the predicted and intersecting pixel counts.
Every score, every threshold of a sweep and (later) every bootstrap resample is computed from these
counts: each mask is scored once, and the rows are small enough to gather across DDP processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .losses import label_sizes
from .metrics import dice, iou, scores_from_counts
from .modeling import segmentation_logits
from .prompts import TASKS, canonical_prompt, other_task
from .upsampling import native_probabilities

SWEEP: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


def thresholds_with(*extra: float, grid: Sequence[float] = SWEEP) -> tuple[float, ...]:
    """The sweep grid plus the given thresholds (e.g. the model's own), sorted, without repeats."""
    return tuple(sorted({round(float(t), 6) for t in (*grid, *extra)}))


@dataclass
class ImageStatistics:
    """Per-pair pixel counts; `intersection` and `predicted` have one column per threshold."""

    thresholds: tuple[float, ...]
    task_id: np.ndarray  # (N,) index into TASKS
    negative: np.ndarray  # (N,) bool: the other task's prompt, scored against an empty mask
    pixels: np.ndarray  # (N,)
    target: np.ndarray  # (N,) target foreground pixels
    intersection: np.ndarray  # (N, T)
    predicted: np.ndarray  # (N, T)

    def __len__(self) -> int:
        return len(self.task_id)

    def column(self, threshold: float) -> int:
        """Index of `threshold` among the thresholds scored (they must include it)."""
        for index, t in enumerate(self.thresholds):
            if abs(t - threshold) < 1e-9:
                return index
        raise KeyError(f"threshold {threshold} was not scored; scored: {self.thresholds}")

    def positive(self, task: str | None = None) -> ImageStatistics:
        """The positive pairs (each image under its own task's prompt), of one task when given."""
        rows = ~self.negative
        return self.select(rows if task is None else rows & (self.task_id == TASKS.index(task)))

    def negatives(self, task: str) -> ImageStatistics:
        """`task`'s images under the other task's prompt (scored against an empty mask)."""
        return self.select(self.negative & (self.task_id == TASKS.index(task)))

    def counts(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(intersection, predicted, target) pixel counts per row at `threshold`."""
        column = self.column(threshold)
        return self.intersection[:, column], self.predicted[:, column], self.target

    def foreground_fraction(self, threshold: float) -> np.ndarray:
        """Per row, the share of pixels marked at `threshold`."""
        return self.predicted[:, self.column(threshold)] / self.pixels

    def scores(self, threshold: float) -> dict[str, float]:
        """`metrics.scores_from_counts` of these rows at `threshold` (miou, dice, dataset_iou, n_images)."""
        return scores_from_counts(*self.counts(threshold))

    def select(self, rows: np.ndarray) -> ImageStatistics:
        """The rows picked by a boolean mask or index array (bootstrap resamples, one task, ...)."""
        return ImageStatistics(self.thresholds, self.task_id[rows], self.negative[rows], self.pixels[rows],
                               self.target[rows], self.intersection[rows], self.predicted[rows])

    def to_tensor(self) -> torch.Tensor:
        """(N, 4 + 2T) float64, for `accelerator.gather_for_metrics`."""
        fixed = np.stack([self.task_id, self.negative, self.pixels, self.target], axis=1).astype(np.float64)
        return torch.from_numpy(np.concatenate([fixed, self.intersection, self.predicted], axis=1))

    @classmethod
    def from_tensor(cls, table: torch.Tensor | np.ndarray, thresholds: Sequence[float]) -> ImageStatistics:
        table = np.asarray(table, dtype=np.float64).reshape(-1, 4 + 2 * len(thresholds))
        n = len(thresholds)
        return cls(tuple(thresholds), table[:, 0].astype(int), table[:, 1] > 0, table[:, 2], table[:, 3],
                   table[:, 4 : 4 + n], table[:, 4 + n :])

    @classmethod
    def concatenate(cls, parts: Sequence[ImageStatistics], thresholds: Sequence[float]) -> ImageStatistics:
        if not parts:
            return cls.from_tensor(np.zeros((0, 4 + 2 * len(thresholds))), thresholds)
        return cls.from_tensor(torch.cat([p.to_tensor() for p in parts]), thresholds)


def pixel_counts(probability: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, predicted) foreground counts of `probability > t` for every sorted threshold t.

    One bucketing pass instead of one comparison per threshold: a pixel is predicted at every
    threshold below its probability.
    """
    def above(values: torch.Tensor) -> np.ndarray:
        buckets = torch.searchsorted(thresholds, values.reshape(-1).contiguous())  # thresholds below each value
        histogram = torch.bincount(buckets, minlength=len(thresholds) + 1)
        return histogram.flip(0).cumsum(0).flip(0)[1:].cpu().numpy()  # count of values above each threshold

    return above(probability[target]), above(probability)


def image_statistics(
    probabilities: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    task_ids: Sequence[int],
    negative: Sequence[bool],
    thresholds: Sequence[float],
) -> ImageStatistics:
    """Statistics of native-size probability maps (H, W) against boolean targets (H, W)."""
    grid = None
    rows = []
    for probability, target, task_id, is_negative in zip(probabilities, targets, task_ids, negative):
        if tuple(probability.shape) != tuple(target.shape):
            raise ValueError(f"probabilities {tuple(probability.shape)} and target {tuple(target.shape)} differ in size")
        if grid is None:
            grid = torch.tensor(thresholds, dtype=probability.dtype, device=probability.device)
        target = target.to(probability.device, torch.bool)
        intersection, predicted = pixel_counts(probability, target, grid)
        rows.append(np.concatenate([[int(task_id), bool(is_negative), target.numel(), int(target.sum())],
                                    intersection, predicted]))
    return ImageStatistics.from_tensor(np.array(rows).reshape(-1, 4 + 2 * len(thresholds)), thresholds)


def batch_statistics(logits: torch.Tensor, batch: dict[str, torch.Tensor], thresholds: Sequence[float]) -> ImageStatistics:
    """Statistics of a collated batch: each row's logits at its label's native (unpadded) size."""
    labels = batch["labels"].to(logits.device)
    probabilities, targets = [], []
    for logit, label, (height, width) in zip(logits, labels, label_sizes(labels)):
        probabilities.append(native_probabilities(logit[None], (height, width))[0])
        targets.append(label[:height, :width] == 1)
    return image_statistics(probabilities, targets, batch["task_ids"].tolist(), batch["negative"].tolist(), thresholds)


def task_scores(statistics: ImageStatistics, threshold: float) -> dict[str, float]:
    """Per-task metrics at `threshold` (metrics.py conventions).

    `iou_<task>` / `dice_<task>` / `dataset_iou_<task>` on positive pairs; `predicted_fraction_<task>`:
    mean share of pixels marked under the task's own prompt; `wrong_prompt_foreground_<task>`: the same
    on that task's images under the other task's prompt (negative pairs), when there are any;
    `mean_iou` / `mean_dice`: means over the tasks present (the model-selection metric).
    """
    metrics: dict[str, float] = {}
    ious, dices = [], []
    for task in TASKS:
        positive, negative = statistics.positive(task), statistics.negatives(task)
        if len(positive):
            scores = positive.scores(threshold)
            metrics[f"iou_{task}"] = scores["miou"]
            metrics[f"dice_{task}"] = scores["dice"]
            metrics[f"dataset_iou_{task}"] = scores["dataset_iou"]
            metrics[f"predicted_fraction_{task}"] = float(positive.foreground_fraction(threshold).mean())
            ious.append(scores["miou"])
            dices.append(scores["dice"])
        if len(negative):
            metrics[f"wrong_prompt_foreground_{task}"] = float(negative.foreground_fraction(threshold).mean())
    if ious:
        metrics["mean_iou"] = float(np.mean(ious))
        metrics["mean_dice"] = float(np.mean(dices))
    return metrics


def task_summary(statistics: ImageStatistics, threshold: float, resamples: int = 1000) -> tuple[dict, dict]:
    """(per task: canonical prompt, scores and their 95% intervals; per task: prompt fidelity), as
    metrics.json holds them."""
    scores = task_scores(statistics, threshold)
    intervals = bootstrap_intervals(statistics, threshold, resamples=resamples)
    tasks, fidelity = {}, {}
    for task in TASKS:
        own = statistics.positive(task)
        if not len(own):
            continue
        tasks[task] = {"prompt": canonical_prompt(task), **own.scores(threshold), "ci95": intervals[task]}
        fidelity[task] = {
            "other_prompt": canonical_prompt(other_task(task)),
            "foreground_fraction_other_prompt": scores.get(f"wrong_prompt_foreground_{task}", float("nan")),
            "foreground_fraction_own_prompt": scores[f"predicted_fraction_{task}"],
            "n_images": len(own),
        }
    return tasks, fidelity


def per_image_scores(statistics: ImageStatistics, threshold: float) -> dict[str, np.ndarray]:
    """Per positive pair, in row order: IoU, Dice, predicted and true foreground fractions."""
    own = statistics.positive()
    intersection, predicted, target = own.counts(threshold)
    return {"iou": iou(intersection, predicted, target), "dice": dice(intersection, predicted, target),
            "predicted_fraction": predicted / own.pixels, "true_fraction": target / own.pixels}


def sweep(statistics: ImageStatistics) -> dict[float, dict[str, float]]:
    """Per threshold: per-task mean per-image IoU on positive pairs, and their mean over tasks."""
    positive = statistics.positive()
    per_image = iou(positive.intersection, positive.predicted, positive.target[:, None])  # (N, T)
    table = {}
    for column, threshold in enumerate(statistics.thresholds):
        row = {task: float(per_image[positive.task_id == i, column].mean())
               for i, task in enumerate(TASKS) if np.any(positive.task_id == i)}
        row["mean_iou"] = float(np.mean(list(row.values()))) if row else float("nan")
        table[threshold] = row
    return table


def bootstrap_intervals(
    statistics: ImageStatistics,
    threshold: float,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """Percentile bootstrap intervals over images of each task's mIoU, Dice and dataset IoU.

    Resamples the per-image counts already scored (positive pairs), so an interval comes from the
    same statistics as its point estimate, never from a second scoring pass.
    """
    generator = np.random.default_rng(seed)
    tail = 100 * (1 - confidence) / 2
    intervals: dict[str, dict[str, list[float]]] = {}
    for task in TASKS:
        rows = statistics.positive(task)
        if not len(rows):
            continue
        intersection, predicted, target = rows.counts(threshold)
        per_image = {"miou": iou(intersection, predicted, target), "dice": dice(intersection, predicted, target)}
        picks = generator.integers(0, len(rows), size=(resamples, len(rows)))
        union = predicted + target - intersection
        samples = {name: values[picks].mean(axis=1) for name, values in per_image.items()}
        unions = union[picks].sum(axis=1)
        samples["dataset_iou"] = np.where(unions > 0, intersection[picks].sum(axis=1) / np.maximum(unions, 1), 1.0)
        intervals[task] = {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
                           for name, v in samples.items()}
    return intervals


def best_threshold(table: dict[float, dict[str, float]], current: float) -> float:
    """Highest mean IoU; ties go to the threshold nearest the current one (no change without a gain)."""
    return max(table, key=lambda t: (round(table[t]["mean_iou"], 12), -abs(t - current)))


@torch.no_grad()
def predict_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Decoder logits of one collated pixel batch (no gradients, on the model's device)."""
    device = next(model.parameters()).device
    return segmentation_logits(model, batch["pixel_values"].to(device), batch["input_ids"].to(device),
                               batch["attention_mask"].to(device), train_encoder=False)


def evaluate_rows(
    model, collate, rows: Iterable[dict], thresholds: Sequence[float] = (0.5,), batch_size: int = 8
) -> ImageStatistics:
    """`ImageStatistics` of `rows` (collated by `collate`) at every threshold, in one pass of the model.

    For scripts and tests on one process; the Trainer shards and gathers its own evaluation.
    """
    model.eval()
    rows = list(rows)
    parts = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        parts.append(batch_statistics(predict_logits(model, batch), batch, thresholds))
    return ImageStatistics.concatenate(parts, thresholds)
