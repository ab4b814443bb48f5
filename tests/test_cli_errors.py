"""Every command answers a mistake with one `error:` line and a non-zero status, before expensive work,
and changes nothing it was not asked to. One test per row of the table in the issue, then the same kinds
of mistakes for train, evaluate, publish and the dataset build."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_drywall import atomic_files, naming
from clipseg_drywall.mask_index import INDEX_FILE
from clipseg_drywall.naming import mask_file_name, prompt_hash, prompt_slugs

from .conftest import CRACKS, REPO, exit_code, requires_shared


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `folder`: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = exit_code(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *words: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def run_script(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.fixture(scope="module")
def photo() -> Path:
    if not CRACKS.is_dir():
        pytest.skip(f"real photos not found in {CRACKS}")
    return sorted((CRACKS / "valid" / "images").glob("*.jpg"))[0]


def predict(argv: list[str], capsys) -> tuple[int, str, str]:
    from clipseg_drywall.predict import main

    return call(main, argv, capsys)


def index_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / INDEX_FILE, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- the table, row by row -------------------------------------------------------------------


@requires_shared
def test_a_prompt_over_77_tokens_is_truncated_with_a_warning(tiny_model_dir, photo, tmp_path, capsys):
    long_prompt = " ".join(["crack"] * 500)
    with pytest.warns(UserWarning, match=r"has 50\d tokens; the text encoder reads only the first 77"):
        code, out, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", long_prompt,
                                  "--output", str(tmp_path / "out")], capsys)
    assert code == 0, err
    (row,) = index_rows(tmp_path / "out")
    assert row["prompt"] == long_prompt
    mask = np.asarray(Image.open(tmp_path / "out" / row["mask"]))
    assert mask.shape == (640, 640) and set(np.unique(mask)) <= {0, 255}
    assert len(row["mask"].split("__")[1]) <= naming.MAX_SLUG_CHARS + len(".png")  # the name is cut too


@requires_shared
def test_a_non_latin_prompt_gets_a_file(tiny_model_dir, photo, tmp_path, capsys):
    code, _, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", "墙上的裂缝", "--prompt", "🧱!!",
                            "--output", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / f"{photo.stem}__墙上的裂缝.png").is_file()
    assert (tmp_path / f"{photo.stem}__prompt-{prompt_hash('🧱!!')}.png").is_file()


@requires_shared
def test_prompts_with_the_same_slug_get_different_files(tiny_model_dir, photo, tmp_path, capsys):
    prompts = ["segment crack", "Segment CRACK!"]
    code, out, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", prompts[0], "--prompt",
                              prompts[1], "--output", str(tmp_path)], capsys)
    assert code == 0, err
    expected = {p: f"{photo.stem}__segment-crack-{prompt_hash(p)}.png" for p in prompts}
    assert {row["prompt"]: row["mask"] for row in index_rows(tmp_path)} == expected
    assert all((tmp_path / name).is_file() for name in expected.values())
    assert "wrote 2 files" in out
    # a later call into the same folder does not take the name of an earlier call's other prompt
    code, _, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", "segment-crack",
                            "--output", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / f"{photo.stem}__segment-crack.png").is_file() and len(index_rows(tmp_path)) == 3


@requires_shared
def test_a_stem_with_a_double_underscore_keeps_earlier_masks(tiny_model_dir, photo, tmp_path, capsys):
    """The slug follows the stem's last `__`: `IMG__001` must not hide `segment crack`'s name from a later call."""
    image = tmp_path / "IMG__001.jpg"
    image.write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    arguments = [str(image), "--model", str(tiny_model_dir), "--output", str(out), "--threshold", "0.5"]
    assert predict([*arguments, "--prompt", "segment crack"], capsys)[0] == 0
    first = (out / "IMG__001__segment-crack.png").read_bytes()
    assert predict([*arguments, "--prompt", "Segment CRACK!"], capsys)[0] == 0
    hashed = f"IMG__001__segment-crack-{prompt_hash('Segment CRACK!')}.png"
    assert {row["prompt"]: row["mask"] for row in index_rows(out)} == {
        "segment crack": "IMG__001__segment-crack.png", "Segment CRACK!": hashed}
    assert (out / "IMG__001__segment-crack.png").read_bytes() == first and (out / hashed).is_file()


@requires_shared
def test_output_that_is_a_file(tiny_model_dir, photo, tmp_path, capsys):
    target = tmp_path / "masks.png"
    target.write_bytes(b"the user's file")
    before = snapshot(tmp_path)
    code, _, err = predict([str(photo), "--model", "org/never-downloaded", "--prompt", "crack",
                            "--output", str(target)], capsys)
    assert_one_error_line(code, err, str(target), "is a file")
    assert snapshot(tmp_path) == before  # checked before the model: a Hub id would have failed otherwise


@requires_shared
def test_output_folder_not_writable(tiny_model_dir, photo, tmp_path, capsys):
    if os.geteuid() == 0:  # permission bits do not stop root; a read-only filesystem does
        if not Path("/sys").is_dir():
            pytest.skip("running as root without a read-only /sys to write into")
        output = Path("/sys/clipseg-drywall-test/masks")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        output = locked / "masks"
    code, _, err = predict([str(photo), "--model", "org/never-downloaded", "--prompt", "crack",
                            "--output", str(output)], capsys)
    assert_one_error_line(code, err, "--output", "cannot write")
    assert not output.exists()


@requires_shared
def test_train_with_a_missing_dataset(tiny_config_dir, tmp_path):
    from .conftest import CLIPSEG_FILES

    run = run_script("train.py", "--config_name", str(tiny_config_dir), "--tokenizer_name", str(CLIPSEG_FILES),
                     "--dataset_path", "/nonexistent", "--output_dir", str(tmp_path / "run"), "--max_steps", "1")
    assert_one_error_line(run.returncode, run.stderr, "--dataset_path /nonexistent", "data_builders build")
    assert not (tmp_path / "run").exists()


@requires_shared
def test_evaluate_with_a_missing_model(tiny_drywall_dir, tmp_path):
    run = run_script("evaluate.py", "--model_path", "/nonexistent", "--dataset_path", str(tiny_drywall_dir),
                     "--output_dir", str(tmp_path / "eval"))
    assert_one_error_line(run.returncode, run.stderr, "--model_path /nonexistent", "no such folder")
    assert not (tmp_path / "eval").exists()


def test_evaluate_help_says_what_update_model_does():
    run = run_script("evaluate.py", "--help")
    assert run.returncode == 0
    help_text = " ".join(run.stdout.split())
    assert "--update_model" in help_text and "--no_update_model" not in help_text
    assert "Off by default: evaluating changes nothing of the model's" in help_text
    # that evaluate.py leaves the model folder alone by default: tests/test_evaluate.py (the refusal test)


@requires_shared
def test_a_single_missing_image_stops_before_the_model_and_the_folder(tmp_path, capsys):
    code, _, err = predict(["/nonexistent/photo.jpg", "--model", "org/never-downloaded", "--prompt", "crack",
                            "--output", str(tmp_path / "out")], capsys)
    assert_one_error_line(code, err, "/nonexistent/photo.jpg", "no such file or folder")
    assert not (tmp_path / "out").exists()


# --- predict: the rest of its contract ------------------------------------------------------------


@requires_shared
def test_predict_missing_model_folder_is_missing_not_a_bad_repo_id(photo, tmp_path, capsys):
    code, _, err = predict([str(photo), "--model", str(tmp_path / "runs" / "small"), "--prompt", "crack",
                            "--output", str(tmp_path / "out")], capsys)
    assert_one_error_line(code, err, "no such folder")
    code, _, err = predict([str(photo), "--model", "not a repo id!", "--prompt", "crack", "--output",
                            str(tmp_path / "out")], capsys)
    assert_one_error_line(code, err, "neither a local folder nor a Hub id")
    code, _, err = predict([str(photo), "--model", "x", "--prompt", " ", "--output", str(tmp_path / "out")], capsys)
    assert_one_error_line(code, err, "--prompt", "empty")
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = predict(["--model", "x"], capsys)
    assert_one_error_line(code, err, "required", "--help")
    run = run_script("-m", "clipseg_drywall.predict", "/nonexistent.jpg", "--model", "x", "--prompt", "crack",
                     "--output", str(tmp_path), "--debug")
    assert run.returncode == 1 and "Traceback" in run.stderr and "FileNotFoundError" in run.stderr


@requires_shared
def test_index_survives_a_failure_mid_call(tiny_model_dir, tmp_path):
    """Masks written before a failure stay, complete and listed; nothing half-written is left."""
    from clipseg_drywall.predict import predict as predict_images
    from clipseg_drywall.segmenters.pytorch import Segmenter

    class FailsOnSecondBatch(Segmenter):
        calls = 0

        def launch_masks(self, *args, **kwargs):  # the batch pipeline's model stage
            self.calls += 1
            if self.calls == 2:
                raise OSError("No space left on device")
            return super().launch_masks(*args, **kwargs)

    segmenter = FailsOnSecondBatch.from_pretrained(tiny_model_dir, batch_size=1)
    photos = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[:2]
    with pytest.raises(OSError, match="No space"):
        predict_images(segmenter, photos, ["segment crack"], tmp_path)
    (row,) = index_rows(tmp_path)
    assert row["image"] == str(photos[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([INDEX_FILE, row["mask"]])


def test_atomic_write_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "photo__crack.png"
    target.write_bytes(b"an earlier, complete mask")

    def fails_midway(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fails_midway)
    with pytest.raises(OSError, match="disk full"):
        atomic_files.save_mask(np.zeros((4, 4), np.uint8), target)
    assert target.read_bytes() == b"an earlier, complete mask"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_naming_rule():
    slugs = prompt_slugs(["segment joint/tape", "Segment  Joint-Tape", "crack", "crack"])
    assert slugs == {"segment joint/tape": f"segment-joint-tape-{prompt_hash('segment joint/tape')}",
                     "Segment  Joint-Tape": f"segment-joint-tape-{prompt_hash('Segment  Joint-Tape')}",
                     "crack": "crack"}
    assert mask_file_name("dir/IMG_1.jpg", "crack", slugs) == "IMG_1__crack.png"
    with pytest.raises(ValueError, match="empty prompt"):
        prompt_slugs(["  "])


# --- the same kinds of mistakes for train, evaluate, publish and the dataset build ------------------


@requires_shared
def test_train_mistakes(tiny_config_dir, tiny_drywall_dir, tmp_path, capsys):
    from clipseg_drywall.training.run_training import main

    from .conftest import CLIPSEG_FILES

    occupied = tmp_path / "a-file"
    occupied.write_text("mine")
    base = ["--tokenizer_name", str(CLIPSEG_FILES), "--dataset_path", str(tmp_path), "--max_steps", "1"]
    cases = [
        (["configs/nope.json"], "no such recipe file"),
        (["--model_name_or_path", str(tmp_path / "no-model"), *base, "--output_dir", str(tmp_path / "o")],
         "--model_name_or_path"),
        (["--config_name", str(tiny_config_dir), *base, "--output_dir", str(tmp_path / "o")], "no saved DatasetDict"),
        (["--config_name", str(tiny_config_dir), *base[:2], "--dataset_path", str(tiny_drywall_dir),
          "--output_dir", str(occupied)], "is a file"),
        (["--config_name", str(tiny_config_dir), "--output_dir", str(tmp_path / "o")], "--dataset_path"),
    ]
    before = snapshot(tmp_path)
    for argv, words in cases:
        code, _, err = call(main, argv, capsys)
        assert_one_error_line(code, err, words)
    assert snapshot(tmp_path) == before


@requires_shared
def test_evaluate_mistakes(tiny_model_dir, tiny_drywall_dir, tmp_path, capsys):
    from clipseg_drywall.run_evaluation import main

    occupied = tmp_path / "a-file"
    occupied.write_text("mine")
    model_before = snapshot(tiny_model_dir)
    base = ["--model_path", str(tiny_model_dir), "--dataset_path", str(tiny_drywall_dir)]
    cases = [
        (["--model_path", str(tiny_model_dir), "--dataset_path", str(tmp_path / "none"), "--output_dir",
          str(tmp_path / "e")], "no saved DatasetDict"),
        ([*base, "--output_dir", str(occupied)], "is a file"),
        ([*base, "--output_dir", str(tmp_path / "e"), "--split", "nope"], "no split 'nope'"),
        ([*base, "--output_dir", str(tmp_path / "e"), "--threshold", "2"], "--threshold"),
        (["--model_path", "org/hub-model", "--dataset_path", str(tiny_drywall_dir), "--output_dir",
          str(tmp_path / "e"), "--update_model"], "--update_model writes into a local model folder"),
    ]
    before = snapshot(tmp_path)
    for argv, words in cases:
        code, _, err = call(main, argv, capsys)
        assert_one_error_line(code, err, words)
    assert snapshot(tmp_path) == before and snapshot(tiny_model_dir) == model_before


def test_publish_mistakes(tmp_path, capsys):
    from clipseg_drywall.publish import main

    code, _, err = call(main, ["--model_dir", str(tmp_path / "none"), "--repo_id", "org/x", "--dry_run"], capsys)
    assert_one_error_line(code, err, str(tmp_path / "none"), "no such model folder")
    code, _, err = call(main, ["--model_dir", str(tmp_path)], capsys)
    assert_one_error_line(code, err, "--repo_id")
    assert list(tmp_path.iterdir()) == []


def test_dataset_build_mistakes(tmp_path, capsys):
    from data_builders.__main__ import main

    occupied = tmp_path / "a-file"
    occupied.write_text("mine")
    cases = [
        (["build", "--output", str(tmp_path / "d")], "--cracks"),
        (["build", "--cracks", str(tmp_path / "no-export"), "--output", str(tmp_path / "d")], "no-export"),
        (["build", "--cracks", str(CRACKS), "--output", str(occupied)], "is a file"),
        (["push", str(tmp_path / "none"), "org/x"], "stats.json"),
    ]
    before = snapshot(tmp_path)
    for argv, words in cases:
        code, _, err = call(main, argv, capsys)
        assert_one_error_line(code, err, words)
    assert snapshot(tmp_path) == before
