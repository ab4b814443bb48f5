"""Shared fixtures: where the real data lives, tiny random CLIPSeg models, small real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import CHROMEDRIVER, CHROMIUM, CLIPSEG_FILES, CRACKS, DATA, JOINTS, tiny_config_dict

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


@pytest.fixture
def chromium():
    """A headless Chromium driven by Selenium (1400x1600 window), quit after the test."""
    pytest.importorskip("selenium", reason="the browser tests need selenium ([test] extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photo() -> Path:
    if not CRACKS.is_dir():
        pytest.skip(f"real photos not found in {CRACKS}")
    return sorted((CRACKS / "valid" / "images").glob("*.jpg"))[0]
