"""The built dataset as the jobs read it: loading a `DatasetDict`, picking splits, and the build record.

`data_builders` writes what this module reads: the `save_to_disk` folder (`dataset_dict.json`) and
`stats.json` beside it, whose keys (layout, leakage vs train, leakage between the re-drawn splits)
are defined here once and imported by the builder, so a rename on either side cannot silently
empty the leakage report of an evaluation or a model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

# ---- the build record: data_builders writes these keys, evaluation and the card read them ----
STATS_FILE = "stats.json"
OFFICIAL_LAYOUT = "default"  # the export's own splits; the dataset configuration `load_dataset(repo)` gives
LAYOUT_KEY = "layout"
LEAKAGE_KEY = "leakage"  # task -> split -> counts of that split's images whose photo is in train
RESPLIT_LEAKAGE_KEY = "leakage_after_resplit"  # task -> pair_name(b, a) -> counts (the source-disjoint layout)
LEAKED_KEY = "leaked_either_way"  # images sharing a photo with the other split, by name or by hash


def pair_name(split: str, against: str) -> str:
    """How the build names the leakage of `split`'s images into `against` ("test vs train")."""
    return f"{split} vs {against}"


def leaked_images(stats: dict[str, Any], split: str) -> dict[str, int]:
    """Per task, the images of `split` that share a source photo with train, from a build's stats."""
    if stats.get(LAYOUT_KEY, OFFICIAL_LAYOUT) == OFFICIAL_LAYOUT:
        return {task: splits[split][LEAKED_KEY] for task, splits in stats.get(LEAKAGE_KEY, {}).items()
                if split in splits}
    pair = pair_name(split, "train")
    return {task: pairs[pair][LEAKED_KEY] for task, pairs in stats.get(RESPLIT_LEAKAGE_KEY, {}).items() if pair in pairs}


def read_build_stats(dataset_path: str | Path | None) -> dict[str, Any] | None:
    """The `stats.json` a build saved beside its DatasetDict, or None (a Hub dataset, an older build)."""
    path = Path(dataset_path) / STATS_FILE if dataset_path else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


# ---- loading ----

def check_saved_dataset(dataset_path: str | Path) -> None:
    """Fail with the build command when `dataset_path` holds no `save_to_disk` DatasetDict."""
    if not (Path(dataset_path) / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"--dataset_path {dataset_path}: no saved DatasetDict there; build one with "
                                f"`python -m data_builders build ... --output {dataset_path}`")


class DatasetSource(Protocol):
    """Where the rows come from (`arguments.DatasetArguments` is one): a folder or a Hub id."""

    dataset_path: str | None
    dataset_name: str | None
    dataset_config: str | None


class TrainEvalSource(DatasetSource, Protocol):
    """A `DatasetSource` with the splits training reads (`arguments.DataArguments` is one)."""

    train_split: str
    eval_split: str
    max_train_samples: int | None
    max_eval_samples: int | None


def load_dataset_dict(source: DatasetSource):
    """The `DatasetDict` of `--dataset_path` (`load_from_disk`) or `--dataset_name` (`load_dataset`)."""
    import datasets

    if source.dataset_path:
        check_saved_dataset(source.dataset_path)
        dataset = datasets.load_from_disk(source.dataset_path)
    else:
        dataset = datasets.load_dataset(source.dataset_name, source.dataset_config)
    if not isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"{source.dataset_path or source.dataset_name} holds one split, not a DatasetDict: build it "
                         "with `python -m data_builders build ...`")
    return dataset


def select_split(dataset, split: str, source: str, max_samples: int | None = None, shuffle_seed: int | None = None):
    """`dataset[split]`, optionally the first `max_samples` rows (after a seeded shuffle)."""
    if split not in dataset:
        raise ValueError(f"{source} has no split {split!r} (it has {list(dataset)}); pass another split.")
    rows = dataset[split]
    if max_samples is not None:
        if shuffle_seed is not None:
            rows = rows.shuffle(seed=shuffle_seed)
        rows = rows.select(range(min(max_samples, len(rows))))
    return rows


def load_train_eval_splits(args: TrainEvalSource):
    """(train rows, eval rows or None); `max_*_samples` take a seeded random subset."""
    dataset = load_dataset_dict(args)
    source = args.dataset_path or args.dataset_name
    if args.train_split not in dataset:
        raise ValueError(f"{source} has no split {args.train_split!r}; "
                         "build it with `python -m data_builders build ...` or pass --train_split.")
    train = select_split(dataset, args.train_split, source, args.max_train_samples, shuffle_seed=0)
    evaluation = None
    if args.eval_split in dataset:
        evaluation = select_split(dataset, args.eval_split, source, args.max_eval_samples, shuffle_seed=0)
    return train, evaluation
