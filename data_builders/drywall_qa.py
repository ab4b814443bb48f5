"""The drywall-QA dataset builder: Roboflow exports -> (image, prompt, mask) rows.

`datasets` 4+ runs no loading scripts, so this is an importable `GeneratorBasedBuilder`:

    from data_builders.drywall_qa import build_dataset
    dataset = build_dataset(cracks=["../shared/data/cracks"], joints=["../shared/data/drywall-join-detect"])

Which export holds which task is said by the caller (`cracks=` / `joints=`), never guessed from
class names. Every file that does not become a row is reported in `builder.report.skipped`.

Two layouts come from one scan (each image decoded once): the exports' own splits (`OFFICIAL`)
and, with `split_by_source`, source-disjoint train / validation / test / roboflow_test splits
(`SOURCE_DISJOINT`, see `splits.py`). `build_layouts` returns both, `build` the one asked for.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import datasets
import numpy as np

from clipseg_drywall.prompts import canonical_prompt, sample_prompt

from . import leakage
from .rasterize import ImageReadError, png_bytes, rasterize
from .roboflow import Annotation, Skip, read_export, source_id
from .schema import FEATURES
from .splits import OFFICIAL, SOURCE_DISJOINT, SOURCE_DISJOINT_SPLITS, Photos, SplitOptions, source_disjoint_splits

CITATION = "Roboflow Universe projects fyp-ny1jt/cracks-3ii36 and objectdetect-pu6rn/drywall-join-detect (CC BY 4.0)"
SPLITS = ("train", "validation", "test")
Layouts = dict[str, datasets.DatasetDict]  # configuration name (OFFICIAL, SOURCE_DISJOINT) -> splits


@dataclass
class DrywallQAConfig(datasets.BuilderConfig):
    """Which exports to read and how to split them.

    split_by_source: also work out the source-disjoint layout: train + validation of each task
        pooled and cut into train / validation / test (`options`: ratios, seed) so that
        no source photo (same `source_id`, or a perceptual-hash copy) is on two sides of any split.
    """

    cracks: tuple[str, ...] = ()
    joints: tuple[str, ...] = ()
    split_by_source: bool = False
    options: SplitOptions = SplitOptions()  # seed (prompts and splits), ratios, hash distance


@dataclass
class RowInfo:
    split: str
    task: str
    prompt: str
    objects: int
    coverage: float
    path: str = ""  # the image file: ties a row of one layout to the same row in the other


@dataclass
class BuildReport:
    """What the build saw: the statistics and the dataset card are made from this."""

    formats: dict[str, dict[str, str]] = field(default_factory=dict)
    files_seen: int = 0
    rows: list[RowInfo] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    invalid_objects: list[Skip] = field(default_factory=list)
    leakage: dict[str, dict] = field(default_factory=dict)
    leakage_after_resplit: dict[str, dict] = field(default_factory=dict)  # task -> "b vs a" -> counts
    # The source-disjoint layout: which layout `build` returned, the split of every image file,
    # its rows, how the export's test split was kept, and the split's inputs (to re-run it).
    layout: str = OFFICIAL
    split_options: dict = field(default_factory=dict)
    source_split: dict[str, str] = field(default_factory=dict)
    source_disjoint_rows: list[RowInfo] = field(default_factory=list)
    kept_test: dict[str, dict] = field(default_factory=dict)
    photos: dict[str, Photos] = field(default_factory=dict)

    @property
    def layouts(self) -> list[str]:
        return [OFFICIAL, SOURCE_DISJOINT] if self.source_split else [OFFICIAL]

    def rows_of(self, layout: str) -> list[RowInfo]:
        return self.source_disjoint_rows if layout == SOURCE_DISJOINT else self.rows


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
        """Leakage per task, and the source-disjoint split when asked for (it needs the same hashes)."""
        for task in ("crack", "taping"):
            members = [a for t, a in items if t == task]
            if not members:
                continue
            hashes = leakage.hash_images([a.image_path for a in members], desc=f"hashing {task} images")
            photos = Photos([a.split for a in members], [source_id(a.image_id) for a in members], hashes)
            self.report.leakage[task] = leakage.leakage_report(
                photos.official, photos.sources, hashes, self.config.options.hash_distance
            )
            if self.config.split_by_source:
                self._split_by_source(task, members, photos)

    def _split_by_source(self, task: str, members: list[Annotation], photos: Photos) -> None:
        options = self.config.options
        splits, kept = source_disjoint_splits(photos, options)
        self.report.split_options = asdict(options)
        self.report.source_split.update({str(a.image_path): split for a, split in zip(members, splits)})
        self.report.photos[task] = photos
        if kept["images"]:
            self.report.kept_test[task] = kept
        self.report.leakage_after_resplit[task] = leakage.pairwise_leakage(
            splits, photos.sources, photos.hashes, options.hash_distance, SOURCE_DISJOINT_SPLITS
        )

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
        rng = random.Random(f"{self.config.options.seed}-{split}")
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
        prompt = _prompt(task, split, rng)
        coverage = float((np.asarray(mask) > 0).mean())
        self.report.rows.append(RowInfo(split, task, prompt, len(annotation.shapes), coverage, str(annotation.image_path)))
        return {
            "image": {"bytes": data if data is not None else png_bytes(image), "path": None},
            "mask": {"bytes": png_bytes(mask), "path": None},
            "prompt": prompt,
            "task": task,
            "image_id": annotation.image_id,
            "source_id": source_id(annotation.image_id),
        }


def _prompt(task: str, split: str, rng: random.Random) -> str:
    """Train rows get a seeded synonym (prompt augmentation); evaluation rows the canonical prompt."""
    return sample_prompt(task, rng) if split == "train" else canonical_prompt(task)


def _replace_prompts(rows: datasets.Dataset, prompts: list[str]) -> datasets.Dataset:
    """`rows` with a new prompt column, at its place in the schema (Arrow columns, no image decoding)."""
    swapped = rows.remove_columns("prompt").add_column("prompt", prompts, feature=FEATURES["prompt"])
    return swapped.select_columns(list(FEATURES))


def _source_disjoint(official: datasets.DatasetDict, report: BuildReport, seed: int) -> datasets.DatasetDict:
    """The source-disjoint layout made from the official rows: selected, not decoded again."""
    pooled = datasets.concatenate_datasets([official[split] for split in official])
    # report.rows holds each split's rows in the order they were generated, i.e. dataset order.
    infos = [row for split in official for row in report.rows if row.split == split]
    targets = [report.source_split[row.path] for row in infos]
    layout = {}
    for split in SOURCE_DISJOINT_SPLITS:
        picked = sorted((k for k, t in enumerate(targets) if t == split), key=lambda k: (infos[k].task, infos[k].path))
        if not picked:
            continue
        rng = random.Random(f"{seed}-{split}")  # as _generate_examples: the same seed, the same prompts
        prompts = [_prompt(infos[k].task, split, rng) for k in picked]
        layout[split] = _replace_prompts(pooled.select(picked).flatten_indices(keep_in_memory=True), prompts)
        report.source_disjoint_rows += [replace(infos[k], split=split, prompt=p) for k, p in zip(picked, prompts)]
    return datasets.DatasetDict(layout)


def build_layouts(
    cracks: Sequence[str | Path] = (),
    joints: Sequence[str | Path] = (),
    split_by_source: bool = False,
    cache_dir: str | Path | None = None,
    **split_options,
) -> tuple[Layouts, BuildReport]:
    """Both layouts from one scan: {OFFICIAL: ..., SOURCE_DISJOINT: ...} (the latter with `split_by_source`);
    `split_options` are `SplitOptions`'s fields (seed, validation_ratio, test_ratio, hash_distance)."""
    options = SplitOptions(**split_options)
    if split_by_source:
        options.check()  # fail before the scan
    with tempfile.TemporaryDirectory(prefix="drywall-qa-") as scratch:
        builder = DrywallQA(
            cache_dir=str(cache_dir or scratch),
            cracks=tuple(str(p) for p in cracks),
            joints=tuple(str(p) for p in joints),
            split_by_source=split_by_source,
            options=options,
        )
        builder.download_and_prepare(download_mode="force_redownload")
        dataset = builder.as_dataset()
        # Detach from the scratch cache: the caller gets an in-memory copy it can save anywhere.
        dataset = datasets.DatasetDict({name: split.flatten_indices(keep_in_memory=True) for name, split in dataset.items()})
    layouts, report = {OFFICIAL: dataset}, builder.report
    if split_by_source:
        layouts[SOURCE_DISJOINT] = _source_disjoint(dataset, report, options.seed)
        report.layout = SOURCE_DISJOINT
    return layouts, report


def build(cracks: Sequence[str | Path] = (), joints: Sequence[str | Path] = (), **options) -> tuple[datasets.DatasetDict, BuildReport]:
    """The DatasetDict of the asked-for layout (source-disjoint with `split_by_source`), with the build
    report; `options` are `build_layouts`'s."""
    layouts, report = build_layouts(cracks, joints, **options)
    return layouts[report.layout], report


def build_dataset(cracks: Sequence[str | Path] = (), joints: Sequence[str | Path] = (), **options) -> datasets.DatasetDict:
    """`build` without the report, for code that only wants the rows."""
    return build(cracks, joints, **options)[0]


__all__ = ["DrywallQA", "DrywallQAConfig", "BuildReport", "Layouts", "build", "build_dataset", "build_layouts"]
