"""Training order: which row comes next, and the seed of its random choices.

The sampler yields `(index, draw)` pairs; `DrawDataset` hands `draw` to the collator, which
seeds every random choice of that example (synonym, flips, negative pair) from it. The choices
are then a function of (seed, epoch, position) only: a resumed run, a run with dataloader
workers, and each DDP process all see the same examples a single uninterrupted run sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..prompts import TASKS, check_task


def _tasks_of(rows: Any) -> list[str]:
    try:
        return list(rows["task"])  # a `datasets.Dataset` reads one column without decoding images
    except (TypeError, KeyError, IndexError):
        return [rows[i]["task"] for i in range(len(rows))]


class DrawSampler(Sampler):
    """A seeded shuffle (or, with `balance_tasks`, tasks drawn evenly) over one epoch of `len(tasks)` rows.

    With `balance_tasks` each position first draws a task uniformly, then the next row of that
    task's own shuffled pool (reshuffled when used up): the rarer task is oversampled, the common
    one undersampled, and an epoch keeps its length.
    """

    def __init__(self, tasks: Sequence[str], seed: int = 0, balance_tasks: bool = False):
        self.tasks = [check_task(t) for t in tasks]
        self.seed = seed
        self.balance_tasks = balance_tasks
        self.epoch = 0
        present = sorted(set(self.tasks), key=TASKS.index)
        self.pools = {t: [i for i, task in enumerate(self.tasks) if task == t] for t in present}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tasks)

    def _order(self, generator: torch.Generator) -> list[int]:
        if not self.balance_tasks or len(self.pools) < 2:
            return torch.randperm(len(self.tasks), generator=generator).tolist()
        names = list(self.pools)
        choices = torch.randint(len(names), (len(self.tasks),), generator=generator).tolist()
        queues: dict[str, list[int]] = {t: [] for t in names}
        order = []
        for choice in choices:
            task = names[choice]
            if not queues[task]:
                pool = self.pools[task]
                queues[task] = [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
            order.append(queues[task].pop())
        return order

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = self._order(generator)
        draws = torch.randint(2**62, (len(order),), generator=generator).tolist()
        return iter(zip(order, draws))


class DrawDataset(Dataset):
    """Rows of a dataset indexed by `index` or `(index, draw)`; the row gains `draw` and `index` keys
    (`index` locates the row's cached features, see `feature_cache.py`)."""

    def __init__(self, rows: Any):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, draw = key if isinstance(key, tuple) else (key, None)
        row = dict(self.rows[int(index)])
        row["draw"] = draw
        row["index"] = int(index)
        return row

    def __getitems__(self, keys: list) -> list[dict]:
        """The rows of a batch (what a DataLoader asks for) in one read: for a `datasets.Dataset` one Arrow
        read and one decode pass instead of one per row, the larger part of a small image's cost."""
        if not hasattr(self.rows, "column_names"):
            return [self[key] for key in keys]
        pairs = [key if isinstance(key, tuple) else (key, None) for key in keys]
        columns = self.rows[[int(index) for index, _ in pairs]]
        return [{**{name: values[i] for name, values in columns.items()}, "draw": draw, "index": int(index)}
                for i, (index, draw) in enumerate(pairs)]

    @property
    def tasks(self) -> list[str]:
        return _tasks_of(self.rows)
