"""Split layouts: the exports' own (official) splits, and source-disjoint ones carved per task.

The source-disjoint layout keeps every group of images that share a source photo (same
`source_id`, or a perceptual-hash copy under any flip/rotation, see `leakage.py`) on one side of
every split. Train + validation of each task are pooled and cut, group by group in a seeded order,
into test (`test_ratio` of the pool), validation (`validation_ratio`) and train (the rest).
An export's own test split is kept whole as `roboflow_test`, so results on it stay comparable
with published ones; pooled images linked to it join it, or that split would leak.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np

from clipseg_drywall.data import OFFICIAL_LAYOUT

from . import leakage

OFFICIAL = OFFICIAL_LAYOUT  # the dataset configuration `load_dataset(repo)` gives
SOURCE_DISJOINT = "source-disjoint"
KEPT_TEST = "roboflow_test"  # the export's own test split, under the source-disjoint layout
OFFICIAL_SPLITS = ("train", "validation", "test")
SOURCE_DISJOINT_SPLITS = ("train", "validation", "test", KEPT_TEST)


@dataclass
class Photos:
    """One task's images as the split needs them: official split, source photo, dihedral hashes."""

    official: list[str]
    sources: list[str]
    hashes: list[np.ndarray | None]


@dataclass(frozen=True)
class SplitOptions:
    """How a build draws its splits: the one list of these options (the builder config, `build_layouts`
    and the command's flags are made from it)."""

    seed: int = field(default=0, metadata={"help": "seed for train prompts and --split-by-source"})
    validation_ratio: float = field(default=0.15, metadata={"help": "validation share with --split-by-source"})
    test_ratio: float = field(default=0.15, metadata={"help": "test share with --split-by-source"})
    hash_distance: int = field(default=4, metadata={"help": "max perceptual-hash bit distance counted as a copy"})

    @classmethod
    def flags(cls) -> list[tuple[str, type, object, str]]:
        """(flag, type, default, help) of every option, as `python -m data_builders build` takes them."""
        return [(f"--{f.name.replace('_', '-')}", type(f.default), f.default, f.metadata["help"]) for f in fields(cls)]

    def check(self) -> None:
        for name in ("validation_ratio", "test_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} is not in [0, 1)")
        if self.validation_ratio + self.test_ratio >= 1:
            raise ValueError(
                f"--validation-ratio {self.validation_ratio} + --test-ratio {self.test_ratio} leave no train images; "
                "keep their sum below 1"
            )


def photo_groups(photos: Photos, hash_distance: int) -> list[int]:
    """The connected group of every image: shared source name or a hash link, in either direction."""
    # near_duplicate_pairs compares the 8 variants of one side with the other's plain hash, which
    # is not symmetric; comparing the set with itself covers both directions.
    links = [(i, j) for i, j in leakage.near_duplicate_pairs(photos.hashes, photos.hashes, hash_distance) if i != j]
    return leakage.group_ids(photos.sources, links)


def _fill(order: list[int], size: Counter, targets: dict[str, int]) -> dict[int, str]:
    """Each group in `order` to the first split it fits in without passing that split's target.

    Groups that fit nowhere stay in train, so one large group (a chain of hash look-alikes can
    join 200 images) never pushes a small split far past its share.
    """
    taken, split_of = dict.fromkeys(targets, 0), {}
    for group in order:
        for split, target in targets.items():
            if taken[split] + size[group] <= target:
                split_of[group] = split
                taken[split] += size[group]
                break
    return split_of


def _kept_test_links(photos: Photos, groups: list[int], kept: set[int], hash_distance: int) -> dict[str, int]:
    """How the export's test split touches train/validation: directly, and through whole groups."""
    test = [i for i, split in enumerate(photos.official) if split == "test"]
    others = [i for i, split in enumerate(photos.official) if split != "test"]
    test_sources = {photos.sources[i] for i in test}
    direct = {i for i in others if photos.sources[i] in test_sources}
    direct |= leakage.linked_by_hash(test, others, photos.hashes, hash_distance)
    moved = Counter(photos.official[i] for i in others if groups[i] in kept)
    return {
        "images": len(test),
        "sharing_source_or_hash": len(direct),
        "moved_from_train": moved["train"],
        "moved_from_validation": moved["validation"],
    }


def source_disjoint_splits(photos: Photos, options: SplitOptions) -> tuple[list[str], dict[str, int]]:
    """The new split of every image, and how the export's test split was kept (for the statistics)."""
    options.check()
    groups = photo_groups(photos, options.hash_distance)
    kept = {groups[i] for i, split in enumerate(photos.official) if split == "test"}
    pool = [i for i, g in enumerate(groups) if g not in kept]
    size = Counter(groups[i] for i in pool)
    order = sorted(size)  # group ids are indices into a deterministic scan order
    random.Random(options.seed).shuffle(order)
    targets = {"test": round(options.test_ratio * len(pool)), "validation": round(options.validation_ratio * len(pool))}
    split_of = _fill(order, size, targets)
    new = [KEPT_TEST if g in kept else split_of.get(g, "train") for g in groups]
    return new, _kept_test_links(photos, groups, kept, options.hash_distance)
