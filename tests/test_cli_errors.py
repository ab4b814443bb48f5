"""Every command answers a mistake with one `error:` line and a non-zero status, before expensive work,
and changes nothing it was not asked to. One test per row of the table in the issue, then the same kinds
of mistakes for train, evaluate, publish and the dataset build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import CRACKS, REPO, call, predict, requires_shared


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `folder`: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


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


# --- the table, row by row -------------------------------------------------------------------










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
    from .helpers import CLIPSEG_FILES

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








# --- the same kinds of mistakes for train, evaluate, publish and the dataset build ------------------


@requires_shared
def test_train_mistakes(tiny_config_dir, tiny_drywall_dir, tmp_path, capsys):
    from clipseg_drywall.training.run_training import main

    from .helpers import CLIPSEG_FILES

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
