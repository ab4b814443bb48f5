"""Shared fixtures: where the real data lives, tiny random CLIPSeg models, small real datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .browser import start_chromium
from .helpers import CLIPSEG_FILES, CRACKS, DATA, JOINTS, report_argv, tiny_config_dict

# Fixtures that build the whole real dataset (20-30 s each) or evaluate a model end to end through the
# script (a minute): a test that uses one is `slow`, out of the quick loop (`-m "not slow"`).
SLOW_FIXTURES = {"shared_build", "shared_layouts", "shared_dataset", "evaluated"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory) -> Path:
    """A directory holding only a tiny `config.json` (for `--config_name`)."""
    import json

    path = tmp_path_factory.mktemp("tiny-config")
    (path / "config.json").write_text(json.dumps(tiny_config_dict(), indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random `CLIPSegForImageSegmentation` + the real CIDAS processor files."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegProcessor

    from clipseg_drywall.modeling import model_from_config

    if not CLIPSEG_FILES.is_dir():
        pytest.skip(f"CLIPSeg processor files not found in {CLIPSEG_FILES}")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-model")
    model = model_from_config(CLIPSegConfig(**tiny_config_dict()))
    model.save_pretrained(path)
    CLIPSegProcessor.from_pretrained(CLIPSEG_FILES).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_build():
    """The dataset built from the real exports in ../shared/data, with its build report (~20 s)."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found in {DATA}")
    from data_builders.drywall_qa import build

    return build(cracks=[CRACKS], joints=[JOINTS])


@pytest.fixture(scope="session")
def shared_layouts():
    """Both layouts of the real exports from one scan, `--split-by-source` with seed 0, and the report (~30 s)."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found in {DATA}")
    from data_builders.drywall_qa import build_layouts

    return build_layouts(cracks=[CRACKS], joints=[JOINTS], split_by_source=True, seed=0)


@pytest.fixture(scope="session")
def shared_dataset(shared_build):
    """The DatasetDict built from ../shared/data (train 2492, validation 403, test 4 rows)."""
    return shared_build[0]


def _pick(dataset, per_task: int) -> list[int]:
    """The first `per_task` row indices of each task (a deterministic, task-balanced subset)."""
    tasks = dataset["task"]
    picked = []
    for task in ("crack", "taping"):
        picked += [i for i, t in enumerate(tasks) if t == task][:per_task]
    return picked


@pytest.fixture(scope="session")
def tiny_drywall_dir(shared_build, tmp_path_factory) -> Path:
    """Real rows of the official layout, saved as the build saves it (with its stats.json):
    train 8 (4 per task), validation 4 (2 per task)."""
    import datasets

    from data_builders.hub import save_dataset
    from data_builders.stats import compute_statistics

    dataset, report = shared_build
    path = tmp_path_factory.mktemp("tiny-drywall")
    train, validation = dataset["train"], dataset["validation"]
    subset = datasets.DatasetDict(train=train.select(_pick(train, 4)), validation=validation.select(_pick(validation, 2)))
    save_dataset(subset, compute_statistics(report), path)
    return path


@pytest.fixture(scope="session")
def tiny_disjoint_dir(shared_layouts, tmp_path_factory) -> Path:
    """Real rows of the source-disjoint layout, saved as the build saves it (with its stats.json):
    train 8, validation 4 and test 6 rows, half of each per task."""
    import datasets

    from data_builders.hub import save_dataset
    from data_builders.stats import compute_statistics

    layouts, report = shared_layouts
    dataset = layouts[report.layout]
    path = tmp_path_factory.mktemp("tiny-disjoint")
    subset = datasets.DatasetDict({split: dataset[split].select(_pick(dataset[split], n))
                                   for split, n in (("train", 4), ("validation", 2), ("test", 3))})
    save_dataset(subset, compute_statistics(report), path)
    return path


@pytest.fixture(scope="session")
def learning_drywall_dir(shared_dataset, tmp_path_factory) -> Path:
    """16 real training rows (8 per task) as a DatasetDict with a single `train` split."""
    import datasets

    path = tmp_path_factory.mktemp("learning-drywall")
    train = shared_dataset["train"]
    datasets.DatasetDict(train=train.select(_pick(train, 8))).save_to_disk(path)
    return path


# --- the inspection report (test_report.py, test_report_review.py) ---------------------------------------


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """4 crack and 2 joint validation photos, a file that is not an image, and a second folder whose photo has
    the stem of one in the first (skipped: its masks would overwrite the other's)."""
    if not (CRACKS.is_dir() and JOINTS.is_dir()):
        pytest.skip(f"real photos not found in {CRACKS.parent}")
    folder = tmp_path_factory.mktemp("photos")
    sources = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[:4] + sorted((JOINTS / "valid").glob("*.jpg"))[:2]
    for index, source in enumerate(sources):
        Image.open(source).convert("RGB").resize((320, 320)).save(folder / f"photo{index:02d}.jpg", quality=92)
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "other").mkdir()
    shutil.copyfile(folder / "photo00.jpg", folder / "other" / "photo00.jpg")
    return folder


@pytest.fixture(scope="session")
def threshold(tiny_model_dir, photo_dir) -> float:
    """The tiny model's median probability on a real photo: its masks then mark something, and differ by photo."""
    from clipseg_drywall.report.command import DEFAULT_PROMPTS
    from clipseg_drywall.segmenters.pytorch import Segmenter

    segmenter = Segmenter.from_pretrained(tiny_model_dir)
    (result,) = segmenter.iter_segment([photo_dir / "photo00.jpg"], DEFAULT_PROMPTS[:1], return_probabilities=True)
    return float(np.median(result.probabilities[DEFAULT_PROMPTS[0]]))




@pytest.fixture(scope="session")
def made(tiny_model_dir, photo_dir, threshold, tmp_path_factory) -> Path:
    """A report of `photo_dir` by the tiny model at 0.05 mm per pixel; tests that change it work on a copy."""
    from clipseg_drywall.report.command import main

    output = tmp_path_factory.mktemp("report")
    assert main(report_argv(photo_dir, tiny_model_dir, output, threshold)) == 0
    return output






@pytest.fixture
def chromium():
    """A headless Chromium driven by Selenium (1400x1600 window), quit after the test."""
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photo() -> Path:
    if not CRACKS.is_dir():
        pytest.skip(f"real photos not found in {CRACKS}")
    return sorted((CRACKS / "valid" / "images").glob("*.jpg"))[0]
