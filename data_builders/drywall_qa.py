"""The drywall-QA dataset builder: Roboflow exports -> (image, prompt, mask) rows.

`datasets` 4+ runs no loading scripts, so this is an importable `GeneratorBasedBuilder`:

    from data_builders.drywall_qa import build_dataset
    dataset = build_dataset(cracks=["../shared/data/cracks"], joints=["../shared/data/drywall-join-detect"])

Which export holds which task is said by the caller (`cracks=` / `joints=`), never guessed from
class names. Every file that does not become a row is reported in `builder.report.skipped`.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from clipseg_drywall.prompts import canonical_prompt, sample_prompt

from . import leakage
from .exports import Annotation, Skip, read_export, source_id
from .features import FEATURES
from .rasterize import ImageReadError, png_bytes, rasterize

CITATION = "Roboflow Universe projects fyp-ny1jt/cracks-3ii36 and objectdetect-pu6rn/drywall-join-detect (CC BY 4.0)"
SPLITS = ("train", "validation", "test")


@dataclass
class DrywallQAConfig(datasets.BuilderConfig):
    """Which exports to read and how to split them.

    split_by_source: pool train + validation of each task and re-split them so that no source
        photo (same `source_id`, or a perceptual-hash copy) is on both sides.
    """

    cracks: tuple[str, ...] = ()
    joints: tuple[str, ...] = ()
    seed: int = 0
    split_by_source: bool = False
    validation_ratio: float = 0.15
    hash_distance: int = 4


@dataclass
class RowInfo:
    split: str
    task: str
    prompt: str
    objects: int
    coverage: float


@dataclass
class BuildReport:
    """What the build saw: the statistics and the dataset card are made from this."""

    formats: dict[str, dict[str, str]] = field(default_factory=dict)
    files_seen: int = 0
    rows: list[RowInfo] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    invalid_objects: list[Skip] = field(default_factory=list)
    leakage: dict[str, dict] = field(default_factory=dict)
    leakage_after_resplit: dict[str, dict] = field(default_factory=dict)


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and p.parent != root)


class DrywallQA(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = DrywallQAConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = BuildReport()

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Drywall QA: site photos, a text prompt (crack / taping area) and a binary mask.",
            features=FEATURES,
            license="cc-by-4.0",
            citation=CITATION,
        )

    def _scan(self) -> list[tuple[str, Annotation]]:
        if not (self.config.cracks or self.config.joints):
            raise ValueError("no exports given: pass at least one cracks=... or joints=... export folder")
        items: list[tuple[str, Annotation]] = []
        for task, roots in (("crack", self.config.cracks), ("taping", self.config.joints)):
            for root in roots:
                scan, formats = read_export(root)
                self.report.formats[str(root)] = formats
                self.report.files_seen += _count_files(Path(root))
                self.report.skipped += scan.skipped
                items += [(task, annotation) for annotation in scan.annotations]
        return items

    def _check_leakage(self, items: list[tuple[str, Annotation]]) -> None:
        """Leakage per task, and the re-split when asked for (it needs the same hashes)."""
        for task in ("crack", "taping"):
            members = [a for t, a in items if t == task]
            if not members:
                continue
            hashes = leakage.hash_images([a.image_path for a in members], desc=f"hashing {task} images")
            sources = [source_id(a.image_id) for a in members]
            self.report.leakage[task] = leakage.leakage_report(
                [a.split for a in members], sources, hashes, self.config.hash_distance
            )
            if self.config.split_by_source:
                self._resplit(members, sources, hashes)
                self.report.leakage_after_resplit[task] = leakage.leakage_report(
                    [a.split for a in members], sources, hashes, self.config.hash_distance
                )

    def _resplit(self, members: list[Annotation], sources: list[str], hashes: list) -> None:
        pool = [i for i, a in enumerate(members) if a.split in ("train", "validation")]
        test = [i for i, a in enumerate(members) if a.split == "test"]
        pool_hashes = [hashes[i] for i in pool]
        links = leakage.near_duplicate_pairs(pool_hashes, pool_hashes, self.config.hash_distance)
        links = [(pool[a], pool[b]) for a, b in links if a != b]
        test_links = leakage.near_duplicate_pairs(pool_hashes, [hashes[i] for i in test], self.config.hash_distance)
        links += [(pool[a], test[b]) for a, b in test_links]
        groups = leakage.group_ids(sources, links)
        test_groups = {groups[i] for i in test}
        pool_groups = sorted({groups[i] for i in pool} - test_groups)
        random.Random(self.config.seed).shuffle(pool_groups)
        target = round(self.config.validation_ratio * len(pool))
        size = {g: 0 for g in pool_groups}
        for i in pool:
            if groups[i] in size:
                size[groups[i]] += 1
        validation, taken = set(), 0
        for group in pool_groups:
            if taken >= target:
                break
            validation.add(group)
            taken += size[group]
        for i in pool:
            # A photo that also sits in test stays in train rather than leak into validation twice.
            members[i].split = "validation" if groups[i] in validation else "train"

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        items = self._scan()
        self._check_leakage(items)
        by_split = {split: [(t, a) for t, a in items if a.split == split] for split in SPLITS}
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"items": rows, "split": split})
            for split, rows in by_split.items()
            if rows
        ]

    def _generate_examples(self, items: Sequence[tuple[str, Annotation]], split: str):
        rng = random.Random(f"{self.config.seed}-{split}")
        index = 0
        for task, annotation in sorted(items, key=lambda item: (item[0], str(item[1].image_path))):
            row = self._row(task, annotation, split, rng)
            if row is not None:
                yield datasets.builder.Key(0, index), row
                index += 1

    def _row(self, task: str, annotation: Annotation, split: str, rng: random.Random) -> dict | None:
        for problem in annotation.invalid_objects:
            self.report.invalid_objects.append(Skip(annotation.image_path, problem))
        if annotation.invalid_objects and not annotation.shapes:
            self.report.skipped.append(
                Skip(annotation.image_path, "no valid object: " + "; ".join(annotation.invalid_objects))
            )
            return None
        try:
            image, data, mask = rasterize(annotation)
        except ImageReadError as error:
            self.report.skipped.append(Skip(annotation.image_path, str(error).split(": ", 1)[-1]))
            return None
        prompt = sample_prompt(task, rng) if split == "train" else canonical_prompt(task)
        coverage = float((np.asarray(mask) > 0).mean())
        self.report.rows.append(RowInfo(split, task, prompt, len(annotation.shapes), coverage))
        return {
            "image": {"bytes": data if data is not None else png_bytes(image), "path": None},
            "mask": {"bytes": png_bytes(mask), "path": None},
            "prompt": prompt,
            "task": task,
            "image_id": annotation.image_id,
            "source_id": source_id(annotation.image_id),
        }


def build(
    cracks: Sequence[str | Path] = (),
    joints: Sequence[str | Path] = (),
    seed: int = 0,
    split_by_source: bool = False,
    validation_ratio: float = 0.15,
    hash_distance: int = 4,
    cache_dir: str | Path | None = None,
) -> tuple[datasets.DatasetDict, BuildReport]:
    """Build the DatasetDict from the given exports, with the report of what was seen and skipped."""
    with tempfile.TemporaryDirectory(prefix="drywall-qa-") as scratch:
        builder = DrywallQA(
            cache_dir=str(cache_dir or scratch),
            cracks=tuple(str(p) for p in cracks),
            joints=tuple(str(p) for p in joints),
            seed=seed,
            split_by_source=split_by_source,
            validation_ratio=validation_ratio,
            hash_distance=hash_distance,
        )
        builder.download_and_prepare(download_mode="force_redownload")
        dataset = builder.as_dataset()
        # Detach from the scratch cache: the caller gets an in-memory copy it can save anywhere.
        dataset = datasets.DatasetDict({name: split.flatten_indices(keep_in_memory=True) for name, split in dataset.items()})
    return dataset, builder.report


def build_dataset(cracks: Sequence[str | Path] = (), joints: Sequence[str | Path] = (), **options) -> datasets.DatasetDict:
    """`build` without the report, for code that only wants the rows."""
    return build(cracks, joints, **options)[0]


__all__ = ["DrywallQA", "DrywallQAConfig", "BuildReport", "build", "build_dataset"]
