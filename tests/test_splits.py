"""Source-disjoint splits: no photo in two splits, seeded, near the asked shares; both Hub configurations load."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from clipseg_drywall.data import leaked_images
from data_builders import leakage
from data_builders.__main__ import main
from data_builders.hub import dataset_card, write_parquet
from data_builders.splits import (
    KEPT_TEST,
    OFFICIAL,
    SOURCE_DISJOINT,
    Photos,
    SplitOptions,
    source_disjoint_splits,
)
from data_builders.stats import compute_statistics, format_statistics

from .helpers import CRACKS, DATA, JOINTS, exit_code

requires_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found in {DATA} (the repo's ../shared/data)")


def _row_hashes(rows: datasets.Dataset) -> list[np.ndarray | None]:
    """Perceptual hashes of the stored image bytes: checks the rows, not the build's own bookkeeping."""
    raw = rows.cast_column("image", datasets.Image(decode=False))["image"]
    return [leakage.dihedral_hashes(io.BytesIO(image["bytes"])) for image in raw]


def _by_task(layout: datasets.DatasetDict, task: str) -> dict[str, datasets.Dataset]:
    return {split: rows.filter(lambda t: t == task, input_columns="task") for split, rows in layout.items()}


# --- without the real data -------------------------------------------------------------------


def test_groups_stay_whole_and_the_export_test_split_is_kept():
    rng = np.random.default_rng(0)
    sources = [f"photo{i // 3}" for i in range(300)]  # 100 photos, 3 augmented copies each
    official = ["test" if s == "photo0" else "validation" if i % 5 == 0 else "train" for i, s in enumerate(sources)]
    hashes = [np.full(8, rng.integers(0, 2**63), dtype=np.uint64) for _ in sources]
    hashes[13] = hashes[0].copy()  # photo4 (all train) is a renamed copy of the test photo: it must join it
    new, kept = source_disjoint_splits(Photos(official, sources, hashes), SplitOptions(seed=0, hash_distance=0))
    split_of_photo = {}
    for source, split in zip(sources, new):
        assert split_of_photo.setdefault(source, split) == split, source
    assert split_of_photo["photo0"] == split_of_photo["photo4"] == KEPT_TEST
    assert kept == {"images": 3, "sharing_source_or_hash": 1, "moved_from_train": 3, "moved_from_validation": 0}
    counts = Counter(new)
    # 0.15 of the 294 pooled images is 44: whole groups of 3 fill each split to 42 without passing it.
    assert counts[KEPT_TEST] == 6 and counts["test"] == counts["validation"] == 42


def test_ratios_that_leave_no_train_images_are_refused(tmp_path, capsys):
    code = exit_code(main, ["build", "--split-by-source", "--validation-ratio", "0.5", "--test-ratio", "0.5",
                            "--cracks", str(tmp_path), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "keep their sum below 1" in capsys.readouterr().err


# --- on the real exports ---------------------------------------------------------------------


@requires_data
def test_no_photo_is_in_two_splits(shared_layouts):
    layouts, report = shared_layouts
    for task in ("crack", "taping"):
        parts = _by_task(layouts[SOURCE_DISJOINT], task)
        hashes = {split: _row_hashes(rows) for split, rows in parts.items()}
        for a, b in itertools.combinations(parts, 2):
            assert not set(parts[a]["source_id"]) & set(parts[b]["source_id"]), (task, a, b)
            assert not leakage.near_duplicate_pairs(hashes[a], hashes[b], report.split_options["hash_distance"])
            assert not leakage.near_duplicate_pairs(hashes[b], hashes[a], report.split_options["hash_distance"])
    for per_pair in report.leakage_after_resplit.values():
        assert all(leak["leaked_either_way"] == 0 for leak in per_pair.values())


@requires_data
def test_the_split_is_seeded(shared_layouts):
    layouts, report = shared_layouts
    for task, photos in report.photos.items():
        first, _ = source_disjoint_splits(photos, SplitOptions(seed=0))
        again, _ = source_disjoint_splits(photos, SplitOptions(seed=0))
        other, _ = source_disjoint_splits(photos, SplitOptions(seed=1))
        assert first == again and first != other
        # The built layout is the seed-0 split: the same number of rows in each split.
        built = {split: len(rows) for split, rows in _by_task(layouts[SOURCE_DISJOINT], task).items() if len(rows)}
        assert built == {split: n for split, n in Counter(first).items()}


@requires_data
def test_each_task_gets_its_test_and_validation_share(shared_layouts):
    layouts, _ = shared_layouts
    for task in ("crack", "taping"):
        sizes = Counter(split for split, t in _split_task(layouts[SOURCE_DISJOINT]) if t == task)
        pool = sizes["train"] + sizes["validation"] + sizes["test"]
        assert abs(sizes["test"] / pool - 0.15) <= 0.02, (task, sizes)
        assert abs(sizes["validation"] / pool - 0.15) <= 0.02, (task, sizes)


def _split_task(layout: datasets.DatasetDict) -> list[tuple[str, str]]:
    return [(split, task) for split, rows in layout.items() for task in rows["task"]]


@requires_data
def test_the_crack_export_test_split_is_kept_whole(shared_layouts):
    layouts, report = shared_layouts
    official, disjoint = layouts[OFFICIAL], layouts[SOURCE_DISJOINT]
    assert {split: len(rows) for split, rows in official.items()} == {"train": 2492, "validation": 403, "test": 4}
    kept = disjoint[KEPT_TEST]
    assert set(official["test"]["image_id"]) <= set(kept["image_id"])
    assert set(kept["task"]) == {"crack"}
    links = report.kept_test["crack"]
    assert links["images"] == 4
    assert len(kept) == 4 + links["moved_from_train"] + links["moved_from_validation"]
    assert sum(len(rows) for rows in disjoint.values()) == 2899  # every image, once
    assert disjoint["train"].features == official["train"].features


@requires_data
def test_statistics_and_card_show_split_counts_and_zero_leakage(shared_layouts):
    layouts, report = shared_layouts
    stats = compute_statistics(report)
    assert stats["layout"] == SOURCE_DISJOINT
    for name, layout in layouts.items():
        assert stats["configurations"][name]["split_sizes"] == {split: len(rows) for split, rows in layout.items()}
    check = stats["source_disjoint"]
    assert check["leaked_images"] == 0 and check["pairs_checked"] == 6 + 3  # crack: 4 splits, taping: 3
    assert check["options"] == {"seed": 0, "validation_ratio": 0.15, "test_ratio": 0.15, "hash_distance": 4}
    assert stats["leakage"]["taping"]["validation"]["shared_source_id"] == 196  # before the split
    text = format_statistics(stats)
    assert "configuration 'source-disjoint'" in text and "taping test vs train: 0 of" in text
    card = dataset_card(stats).text
    assert f"| source-disjoint | {KEPT_TEST} | crack | {len(layouts[SOURCE_DISJOINT][KEPT_TEST])} |" in card
    assert "| crack | test vs train |" in card and "196 of 202" in card
    # what evaluate.py and the model card read from this record: the builder's numbers, never None
    assert leaked_images(stats, "test") == {"crack": 0, "taping": 0}
    official = {**stats, "layout": OFFICIAL}
    assert leaked_images(official, "validation") == {task: per_split["validation"]["leaked_either_way"]
                                                     for task, per_split in stats["leakage"].items()}
    assert leaked_images(official, "validation")["taping"] >= 196


@requires_data
def test_both_configurations_load_offline_from_the_parquet_layout(shared_layouts, tmp_path):
    layouts, report = shared_layouts
    small = {name: datasets.DatasetDict({s: rows.select(range(3)) for s, rows in layout.items()})
             for name, layout in layouts.items()}
    write_parquet(small, compute_statistics(report), tmp_path / "hub")
    local = str(tmp_path / "hub")
    assert datasets.get_dataset_config_names(local) == [OFFICIAL, SOURCE_DISJOINT]
    official = datasets.load_dataset(local, cache_dir=str(tmp_path / "cache"))
    disjoint = datasets.load_dataset(local, SOURCE_DISJOINT, cache_dir=str(tmp_path / "cache"))
    assert list(official) == ["train", "validation", "test"]
    assert list(disjoint) == ["train", "validation", "test", KEPT_TEST]
    for name, loaded in ((OFFICIAL, official), (SOURCE_DISJOINT, disjoint)):
        for split, rows in loaded.items():
            assert rows["image_id"] == small[name][split]["image_id"]
            assert rows["prompt"] == small[name][split]["prompt"]
    front = yaml.safe_load((tmp_path / "hub" / "README.md").read_text().split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == [OFFICIAL, SOURCE_DISJOINT]


def _small_exports(root: Path) -> tuple[Path, Path]:
    """Real images, few of them: 12 train + 6 valid + the 4 test crack images, 12 + 6 joint images."""
    cracks = root / "cracks"
    for split, keep in (("train", 12), ("valid", 6), ("test", 4)):
        for kind in ("images", "labels"):
            (cracks / split / kind).mkdir(parents=True)
        for label in sorted((CRACKS / split / "labels").glob("*.txt"))[:keep]:
            (cracks / split / "labels" / label.name).symlink_to(label)
            image = CRACKS / split / "images" / f"{label.stem}.jpg"
            (cracks / split / "images" / image.name).symlink_to(image)
    joints = root / "joints"
    for split, keep in (("train", 12), ("valid", 6)):
        (joints / split).mkdir(parents=True)
        coco = json.loads((JOINTS / split / "_annotations.coco.json").read_text())
        coco["images"] = coco["images"][:keep]
        for image in coco["images"]:
            (joints / split / image["file_name"]).symlink_to(JOINTS / split / image["file_name"])
        (joints / split / "_annotations.coco.json").write_text(json.dumps(coco))
    return cracks, joints


@requires_data
def test_cli_saves_the_asked_layout_and_writes_both_configurations(tmp_path, capsys):
    cracks, joints = _small_exports(tmp_path / "exports")
    out, hub = tmp_path / "built", tmp_path / "hub"
    args = ["build", "--split-by-source", "--test-ratio", "0.2", "--seed", "1", "--cracks", str(cracks),
            "--joints", str(joints), "--output", str(out), "--parquet-dir", str(hub)]
    assert main(args) == 0
    saved = datasets.load_from_disk(str(out))
    assert list(saved) == ["train", "validation", "test", KEPT_TEST]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["layout"] == SOURCE_DISJOINT and stats["source_disjoint"]["leaked_images"] == 0
    official = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "cache"))
    disjoint = datasets.load_dataset(str(hub), SOURCE_DISJOINT, cache_dir=str(tmp_path / "cache"))
    assert {s: len(r) for s, r in official.items()} == {"train": 24, "validation": 12, "test": 4}
    assert {s: len(r) for s, r in disjoint.items()} == {s: len(r) for s, r in saved.items()}
    assert set(official["test"]["image_id"]) <= set(disjoint[KEPT_TEST]["image_id"])
    capsys.readouterr()
    # A saved source-disjoint build alone cannot give the default configuration: refused, with the fix.
    assert exit_code(main, ["push", str(out), "org/drywall-qa"]) == 2
    assert "--split-by-source" in capsys.readouterr().err
