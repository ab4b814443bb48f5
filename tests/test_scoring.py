"""The one scoring path: per-image statistics at many thresholds equal scoring each thresholded mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipseg_drywall.metrics import iou_and_dice, scores_from_counts
from clipseg_drywall.scoring import (
    SWEEP,
    ImageStatistics,
    best_threshold,
    image_statistics,
    sweep,
    task_scores,
    thresholds_with,
)
from clipseg_drywall.upsampling import native_probabilities


def _random_pairs(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    probabilities, targets = [], []
    for i in range(n):
        height, width = 20 + 3 * i, 31 - i
        probabilities.append(native_probabilities(torch.randn(1, 11, 11, generator=generator), (height, width))[0])
        targets.append(torch.rand(height, width, generator=generator) > 0.7 if i != 1 else torch.zeros(height, width, dtype=torch.bool))
    return probabilities, targets


def test_statistics_at_every_threshold_equal_scoring_each_mask():
    probabilities, targets = _random_pairs(5)
    thresholds = thresholds_with(0.333)
    statistics = image_statistics(probabilities, targets, [0, 0, 1, 1, 1], [False] * 5, thresholds)
    assert len(statistics) == 5 and statistics.intersection.shape == (5, len(thresholds))
    for threshold in (0.05, 0.333, 0.5, 0.95):
        column = statistics.column(threshold)
        for i, (probability, target) in enumerate(zip(probabilities, targets)):
            mask = (probability > threshold).numpy()
            assert statistics.predicted[i, column] == mask.sum()
            assert statistics.intersection[i, column] == (mask & target.numpy()).sum()
        scores = task_scores(statistics, threshold)
        by_hand = [iou_and_dice((p > threshold).numpy(), t.numpy()) for p, t in zip(probabilities, targets)]
        assert scores["iou_crack"] == pytest.approx(np.mean([s[0] for s in by_hand[:2]]))
        assert scores["dice_taping"] == pytest.approx(np.mean([s[1] for s in by_hand[2:]]))
        assert scores["mean_iou"] == pytest.approx((scores["iou_crack"] + scores["iou_taping"]) / 2)
    with pytest.raises(KeyError, match="not scored"):
        statistics.column(0.42)


def test_sweep_and_negatives_come_from_the_same_statistics():
    probabilities, targets = _random_pairs(4, seed=1)
    empty = [torch.zeros_like(t) for t in targets]
    statistics = ImageStatistics.concatenate([
        image_statistics(probabilities, targets, [0, 0, 1, 1], [False] * 4, SWEEP),
        image_statistics(probabilities, empty, [0, 0, 1, 1], [True] * 4, SWEEP),
    ], SWEEP)
    table = sweep(statistics)
    assert set(table) == set(SWEEP)
    for threshold in SWEEP:
        scores = task_scores(statistics, threshold)
        assert table[threshold]["crack"] == pytest.approx(scores["iou_crack"])
        fractions = [(p > threshold).float().mean().item() for p in probabilities[:2]]
        assert scores["wrong_prompt_foreground_crack"] == pytest.approx(np.mean(fractions))
    best = best_threshold(table, current=0.5)
    assert table[best]["mean_iou"] == max(row["mean_iou"] for row in table.values())
    # the rows survive a DDP gather as one float64 tensor
    again = ImageStatistics.from_tensor(statistics.to_tensor(), SWEEP)
    assert np.array_equal(again.intersection, statistics.intersection) and np.array_equal(again.negative, statistics.negative)


def test_counts_give_the_documented_conventions():
    assert scores_from_counts([0], [0], [0])["miou"] == 1.0  # both empty: nothing to find, nothing found
    assert scores_from_counts([0], [5], [0])["miou"] == 0.0
    assert scores_from_counts([2, 0], [4, 0], [2, 0]) == {"miou": 0.75, "dice": pytest.approx((2 / 3 + 1) / 2),
                                                          "dataset_iou": 0.5, "n_images": 2}


def _statistics_of(n: int, seed: int) -> ImageStatistics:
    """`n` crack images whose per-image IoU scatters around 0.5 (counts drawn at random)."""
    generator = np.random.default_rng(seed)
    target = generator.integers(50, 150, n).astype(float)
    predicted = generator.integers(50, 150, n).astype(float)
    intersection = np.floor(np.minimum(target, predicted) * generator.uniform(0.3, 0.9, n))
    return ImageStatistics((0.5,), np.zeros(n, int), np.zeros(n, bool), np.full(n, 400.0), target,
                           intersection[:, None], predicted[:, None])


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_more_images():
    from clipseg_drywall.scoring import bootstrap_intervals

    widths = []
    for n in (20, 500):
        statistics = _statistics_of(n, seed=n)
        point = task_scores(statistics, 0.5)
        intervals = bootstrap_intervals(statistics, 0.5, resamples=1000, seed=0)["crack"]
        for key, name in (("miou", "iou_crack"), ("dice", "dice_crack"), ("dataset_iou", "dataset_iou_crack")):
            low, high = intervals[key]
            assert low < point[name] < high, (key, low, point[name], high)
        widths.append(intervals["miou"][1] - intervals["miou"][0])
        # seeded: the same resamples give the same interval
        assert bootstrap_intervals(statistics, 0.5, resamples=1000, seed=0)["crack"] == intervals
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 25 times the images, about a fifth of the width
