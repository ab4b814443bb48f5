"""The batch pipeline (`clipseg_drywall.pipeline`): its dealing rule, and predict and the report on it giving the
serial path's masks, byte for byte the same files with 0 or 2 decode workers, an unreadable photo read in a
worker named in the failures, a SIGTERM that leaves a journal the next run resumes from, and the same batches
whichever thread decodes them.

Real photos (resized to three sizes, so the native-size upsample differs), the tiny random model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_drywall.pipeline import Journal, batches_of, deal, share_size

from .helpers import CRACKS, JOINTS, REPO, requires_shared

PROMPTS = ["segment crack", "segment taping area"]
SIZES = [(320, 240), (257, 301), (200, 200)]


def test_the_dealing_rule_gives_every_item_once_in_fixed_batches():
    items = list(range(23))
    for world in (1, 2, 3):
        dealt = {rank: list(deal(items, 4, rank, world)) for rank in range(world)}
        assert sorted(i for batches in dealt.values() for _, batch in batches for i in batch) == items
        for rank, batches in dealt.items():
            assert all(k % world == rank and batch == items[4 * k:4 * k + 4] for k, batch in batches)
            assert batches_of(len(items), 4, rank, world) == [i for _, batch in batches for i in batch]
            assert share_size(len(items), 4, rank, world) == len(batches_of(len(items), 4, rank, world))


def test_the_journal_drops_a_line_a_kill_cut_short(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    with journal.appending() as append:
        append([{"photo": "a", "n": 1}, {"photo": "b", "n": 2}])
    with open(journal.path, "ab") as handle:
        handle.write(b'{"photo": "c", "n"')
    assert list(journal.read()) == ["a", "b"]
    assert journal.path.read_bytes().count(b"\n") == 2 and journal.path.read_bytes().endswith(b"\n")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """9 real photos of three sizes, an unreadable .jpg among them (read by a worker), and a folder whose photo
    has the stem of one in the first (refused before decoding)."""
    if not (CRACKS.is_dir() and JOINTS.is_dir()):
        pytest.skip(f"real photos not found in {CRACKS.parent}")
    folder = tmp_path_factory.mktemp("pipeline-photos")
    sources = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[:6] + sorted((JOINTS / "valid").glob("*.jpg"))[:3]
    for index, source in enumerate(sources):
        Image.open(source).convert("RGB").resize(SIZES[index % 3]).save(folder / f"p{index:02d}.jpg", quality=90)
    (folder / "p04b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    (folder / "other").mkdir()
    shutil.copyfile(folder / "p01.jpg", folder / "other" / "p01.jpg")
    return folder


@pytest.fixture(scope="module")
def threshold(tiny_model_dir, photos) -> float:
    """The median probability of one photo: masks with both values, where a wrong pixel anywhere shows."""
    from clipseg_drywall.segmenters.pytorch import Segmenter

    (result,) = Segmenter.from_pretrained(tiny_model_dir).iter_segment([photos / "p00.jpg"], PROMPTS[:1],
                                                                      return_probabilities=True)
    return float(np.median(result.probabilities[PROMPTS[0]]))


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _serial_masks(model: Path, photos: Path, threshold: float, batch_size: int) -> dict[str, np.ndarray]:
    """Today's serial path: fixed batches of the input order, their readable photos through
    `Segmenter.iter_segment` one batch at a time."""
    from clipseg_drywall.images import ImageLoadError, load_image
    from clipseg_drywall.naming import mask_file_name
    from clipseg_drywall.predict import image_files
    from clipseg_drywall.segmenters.pytorch import Segmenter

    segmenter = Segmenter.from_pretrained(model, threshold=threshold, batch_size=batch_size)
    files = [path for path in image_files([photos, photos / "other"])[0] if path.parent == photos]
    masks = {}
    for start in range(0, len(files), batch_size):
        readable = []
        for path in files[start:start + batch_size]:
            try:
                readable.append((path, load_image(path)))
            except ImageLoadError:
                continue
        for (path, _), result in zip(readable, segmenter.iter_segment([image for _, image in readable], PROMPTS)):
            masks |= {mask_file_name(path, prompt): result.masks[prompt] for prompt in PROMPTS}
    return masks


@requires_shared
def test_predict_gives_the_serial_masks_and_the_same_bytes_with_0_and_2_workers(tiny_model_dir, photos, threshold,
                                                                                 tmp_path, capsys):
    from clipseg_drywall.predict import main

    common = [str(photos), str(photos / "other"), "--model", str(tiny_model_dir), *sum(
        (["--prompt", p] for p in PROMPTS), []), "--threshold", repr(threshold), "--batch_size", "3", "--overlay"]
    errors = {}
    for workers in ("0", "2"):
        assert main([*common, "--output", str(tmp_path / workers), "--num_workers", workers]) == 1  # two failed
        errors[workers] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  ")]
    assert _files(tmp_path / "0") == _files(tmp_path / "2")
    # the unreadable photo, read in a worker, is named with today's reason; the stem clash is refused
    assert len(errors["2"]) == 2 and errors["2"][0].startswith(f"  {photos / 'p04b.jpg'}: not a readable image")
    assert errors["2"][1].startswith(f"  {photos / 'other' / 'p01.jpg'}: ")
    assert errors["0"] == errors["2"]
    serial = _serial_masks(tiny_model_dir, photos, threshold, 3)
    assert len(serial) == 2 * 9 and any(mask.any() and not mask.all() for mask in serial.values())
    for name, mask in serial.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "2" / name)), mask), name
    with open(tmp_path / "2" / "index.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 9


@requires_shared
def test_the_report_finds_the_same_with_0_and_2_workers(tiny_model_dir, photos, threshold, tmp_path):
    from clipseg_drywall.report import command as report

    common = [str(photos), str(photos / "other"), "--model", str(tiny_model_dir), "--threshold", repr(threshold),
              "--batch_size", "3"]
    for workers in ("0", "2"):
        assert report.main([*common, "--output", str(tmp_path / workers), "--num_workers", workers]) == 0
    for name in ("findings.csv", "findings.jsonl"):
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()
    assert _files(tmp_path / "0" / "masks") == _files(tmp_path / "2" / "masks")
    rows = [json.loads(line) for line in (tmp_path / "2" / "findings.jsonl").read_text().splitlines()]
    skipped = {row["photo"]: row for row in rows if row["status"] != "ok"}
    assert "not a readable image" in json.dumps(skipped[str(photos / "p04b.jpg")])


@requires_shared
@pytest.mark.slow
def test_sigterm_leaves_a_journal_that_resumes_to_the_same_outputs(tiny_model_dir, photos, threshold, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for copy in range(4):
        for path in sorted(photos.glob("p0?.jpg")):
            os.link(path, many / f"s{copy}-{path.name}")
    argv = [sys.executable, "-m", "clipseg_drywall.predict", str(many), "--model", str(tiny_model_dir),
            "--prompt", PROMPTS[0], "--threshold", repr(threshold), "--batch_size", "2", "--num_workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*argv, "--output", str(tmp_path / "whole")], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)  # a subprocess too: the same threads, the same kernels
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([*argv, "--output", str(stopped)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    journal, deadline = stopped / ".journal.jsonl", time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 3:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "stopped" in err, err[-2000:]
    # what finished is journaled (and, in one process, folded into index.csv on the way out); the rest is redone
    resumed = subprocess.run([*argv, "--output", str(stopped)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0 and int(resumed.stdout.split("skipped ")[1].split()[0]) >= 3, resumed.stdout
    assert _files(stopped) == _files(tmp_path / "whole")


def test_defaults_fit_the_device_and_an_explicit_option_wins():
    from clipseg_drywall.pipeline import PipelineOptions

    cpu = PipelineOptions().resolved("cpu", 2)
    assert (cpu.num_workers, cpu.write_threads, cpu.pin_memory) == (0, 2, False)  # the model has the cores
    assert PipelineOptions().resolved("cpu", 1).write_threads == 1
    gpu = PipelineOptions().resolved("cuda:0", 16)
    assert gpu.pin_memory and gpu.write_threads == 4 and gpu.num_workers == 11
    report = PipelineOptions().resolved("cuda:0", 16, heavy_writes=True)  # overlays, thumbnails, measurements
    assert (report.write_threads, report.num_workers) == (8, 7)
    assert PipelineOptions().resolved("cpu", 2, heavy_writes=True).write_threads == 2
    assert PipelineOptions(num_workers=3, pin_memory=False).resolved("cuda", 16).num_workers == 3
    assert not PipelineOptions(pin_memory=False).resolved("cuda", 16).pin_memory
    assert PipelineOptions(num_workers=2).resolved("cpu", 2).num_workers == 2
    assert PipelineOptions().resolved("cuda", 16, backend="onnx").num_workers == 0  # may run without torch


@requires_shared
def test_evaluate_on_the_pipeline_scores_as_the_serial_loop(tiny_model_dir, photos, tmp_path):
    """segment_and_score on the pipeline gives the per-image statistics (every threshold, robustness prompts)
    and masks of the serial loop it replaced, exactly."""
    import datasets
    import torch

    from clipseg_drywall.images import load_image
    from clipseg_drywall.prompts import TASKS, canonical_prompt, other_task, robustness_prompts
    from clipseg_drywall.run_evaluation import segment_and_score, unique_names, write_masks
    from clipseg_drywall.scoring import SWEEP, ImageStatistics, image_statistics
    from clipseg_drywall.segmenters.pytorch import Segmenter
    from clipseg_drywall.upsampling import native_probabilities

    rng = np.random.default_rng(0)
    images = [Image.open(photos / f"p{i:02d}.jpg") for i in range(3)]
    masks = [Image.fromarray((rng.random(image.size[::-1]) > 0.9).astype(np.uint8) * 255) for image in images]
    tasks = [TASKS[i % 2] for i in range(3)]
    features = datasets.Features(image=datasets.Image(), mask=datasets.Image(), task=datasets.Value("string"),
                                 image_id=datasets.Value("string"))
    split = datasets.Dataset.from_dict({"image": images, "mask": masks, "task": tasks,
                                        "image_id": [f"p{i}.jpg" for i in range(3)]}, features=features)
    segmenter = Segmenter.from_pretrained(tiny_model_dir)
    ours = segment_and_score(segmenter, split, 2, SWEEP, True, "test", masks=(0.5, tmp_path / "ours"))

    # the serial loop as it was
    canonical = [canonical_prompt(t) for t in TASKS]
    prompts = canonical + [p for t in TASKS for p in robustness_prompts(t) if p not in canonical]
    scored = {t: [(i, p) for i, p in enumerate(prompts) if p in robustness_prompts(t)] for t in TASKS}
    names, parts, per_prompt = unique_names(split["image_id"]), [], {p: [] for p in prompts}
    for start in range(0, 3, 2):
        batch = split[start:start + 2]
        loaded = [load_image(image) for image in batch["image"]]
        logits = torch.as_tensor(segmenter.logits(loaded, prompts)).float().cpu()
        for row, image, image_logits, mask, task in zip(range(start, 3), loaded, logits, batch["mask"], batch["task"]):
            target = torch.from_numpy(np.asarray(mask.convert("L")) > 127)
            probabilities = native_probabilities(image_logits, (image.height, image.width))
            own, other = TASKS.index(task), TASKS.index(other_task(task))
            parts.append(image_statistics([probabilities[own], probabilities[other]],
                                          [target, torch.zeros_like(target)], [own, own], [False, True], SWEEP))
            for index, prompt in scored[task]:
                per_prompt[prompt].append(image_statistics([probabilities[index]], [target], [own], [False], SWEEP))
            write_masks(probabilities[: len(TASKS)], names[row], 0.5, tmp_path / "serial")
    theirs = ImageStatistics.concatenate(parts, SWEEP)
    assert ours.tasks == tasks and ours.names == names
    for field_name in ("task_id", "negative", "pixels", "target", "intersection", "predicted"):
        assert np.array_equal(getattr(ours.statistics, field_name), getattr(theirs, field_name)), field_name
    for prompt, values in per_prompt.items():
        if values:
            assert np.array_equal(ours.per_prompt[prompt].intersection,
                                  ImageStatistics.concatenate(values, SWEEP).intersection), prompt
    assert _files(tmp_path / "ours") == _files(tmp_path / "serial") and len(_files(tmp_path / "ours")) == 6


@requires_shared
def test_the_fast_preprocessing_gives_the_processors_pixels_bit_for_bit(tiny_model_dir, photos):
    import torch

    from clipseg_drywall.images import load_image
    from clipseg_drywall.segmenters.pytorch import Segmenter

    segmenter = Segmenter.from_pretrained(tiny_model_dir)
    assert segmenter.preprocessor().fast is not None
    images = [load_image(path) for path in sorted(photos.glob("p0?.jpg"))]
    images.append(Image.fromarray(np.random.default_rng(1).integers(0, 256, (31, 402, 3), dtype=np.uint8)))
    expected = segmenter.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(segmenter.preprocessor()(images), expected)


@requires_shared
def test_decoding_ahead_is_done_by_whichever_thread_is_free_with_the_same_batches(tiny_model_dir, photos):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from clipseg_drywall.pipeline import Work, _Decode, _decoded_ahead
    from clipseg_drywall.segmenters.pytorch import Segmenter

    decoded_by = {}  # first photo of a batch -> the thread that decoded the batch

    class Recording(_Decode):
        def __getitem__(self, works):
            decoded_by[works[0].name] = threading.current_thread().name
            return super().__getitem__(works)

    decode = Recording(Segmenter.from_pretrained(tiny_model_dir).preprocessor(), keep_images=True)
    files = sorted(photos.glob("p*.jpg"))  # p04b.jpg: unreadable
    batches = [[Work(path.name, path) for path in files[start:start + 3]] for start in range(0, len(files), 3)]
    expected = [decode[batch] for batch in batches]

    def same(prepared, reference) -> bool:
        return (prepared.decoded == reference.decoded and prepared.sizes == reference.sizes
                and prepared.errors == reference.errors and torch.equal(prepared.pixels, reference.pixels))

    with ThreadPoolExecutor(1, "write") as pool:
        busy = threading.Event()
        pool.submit(busy.wait, 60)  # the write thread is busy: the main thread decodes every batch itself
        decoded_by.clear()
        assert all(map(same, _decoded_ahead(decode, iter(batches), False, pool), expected))
        assert list(decoded_by.values()) == ["MainThread"] * len(batches)
        busy.set()
        decoded_by.clear()
        for prepared, reference in zip(_decoded_ahead(decode, iter(batches), False, pool), expected):
            time.sleep(0.2)  # a slow model: the write thread decodes the next batch meanwhile
            assert same(prepared, reference)
    assert [decoded_by[batch[0].name] for batch in batches[1:]] == ["write_0"] * (len(batches) - 1)
    (error,) = [error for prepared in expected for error in prepared.errors.values()]  # p04b.jpg's
    assert "not a readable image" in error
