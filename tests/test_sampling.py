"""The seeded, task-balanced training order (sampling.DrawSampler)."""

from __future__ import annotations

from collections import Counter

from clipseg_drywall.training.sampling import DrawDataset, DrawSampler


def test_sampler_is_seeded_per_epoch_and_balances_tasks():
    tasks = ["crack"] * 90 + ["taping"] * 10
    sampler = DrawSampler(tasks, seed=3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(100)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    balanced = DrawSampler(tasks, seed=3, balance_tasks=True)
    counts = Counter(tasks[i] for i, _ in balanced)
    assert len(balanced) == 100 and 35 < counts["taping"] < 65
    dataset = DrawDataset([{"task": t} for t in tasks])
    assert dataset[(5, 11)] == {"task": "crack", "draw": 11, "index": 5} and dataset.tasks == tasks
