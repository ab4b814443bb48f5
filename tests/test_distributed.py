"""predict split across processes (`accelerate launch`, two CPU processes over gloo), resuming, --input_list.

Real photos from ../shared, the tiny random model: what is checked is the bookkeeping (which process
does which photo, the merged index, what a re-run skips or redoes), byte for byte against one process.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipseg_drywall.mask_index import INDEX_FILE, JOURNAL_GLOB

from .helpers import CRACKS, REPO, requires_shared

pytestmark = requires_shared

PROMPTS = ["--prompt", "segment crack", "--prompt", "segment taping area"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clipseg_drywall.predict"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """12 real validation photos in one folder."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((CRACKS / "valid" / "images").glob("*.jpg"))[:12]:
        shutil.copyfile(path, folder / path.name)
    return folder


def _predict(arguments: list[str], launch: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    command = launch or [sys.executable, "-m", "clipseg_drywall.predict"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in every process of both runs
    return subprocess.run([*command, *arguments], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def _predict_here(arguments: list[str], capsys) -> str:
    """predict in this process (no start-up cost); its standard output."""
    from clipseg_drywall.predict import main

    assert main(arguments) == 0, capsys.readouterr().err[-3000:]
    return capsys.readouterr().out


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tiny_model_dir, photos, tmp_path):
    """Batch 2: process k does batches k, k + 2, ... of the fixed order, so each photo meets the same batch-mate;
    the launched run also decodes in a worker per process."""
    common = [str(photos), "--model", str(tiny_model_dir), *PROMPTS, "--batch_size", "2", "--threshold", "0.5"]
    one = _predict([*common, "--output", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _predict([*common, "--output", str(tmp_path / "two"), "--num_workers", "1"], LAUNCH)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1/2: wrote" in two.stdout and "process 2/2: wrote" in two.stdout
    expected = _files(tmp_path / "one")
    assert len(expected) == 2 * 12 + 1 and _files(tmp_path / "two") == expected  # masks and index.csv, byte for byte
    assert not list((tmp_path / "two").glob(JOURNAL_GLOB))


KILL_AFTER_MASKS = """
import os, signal, sys, runpy
from clipseg_drywall import atomic_files
save_mask, count = atomic_files.save_mask, [0]
def dying_save_mask(mask, target):
    path = save_mask(mask, target)
    count[0] += 1
    if count[0] == int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return path
atomic_files.save_mask = dying_save_mask
import clipseg_drywall.predict as predict
predict.save_mask = dying_save_mask
sys.argv = ["predict", *sys.argv[1:]]
sys.exit(predict.main())
"""


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_outputs(tiny_model_dir, photos, tmp_path, capsys):
    common = [str(photos), "--model", str(tiny_model_dir), *PROMPTS, "--batch_size", "2", "--overlay"]
    _predict_here([*common, "--output", str(tmp_path / "straight")], capsys)
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", KILL_AFTER_MASKS, *common, "--output", str(killed)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "KILL_AFTER": "9"})
    assert run.returncode == -9, run.stderr[-3000:]
    assert not (killed / INDEX_FILE).exists() and len(list(killed.glob(JOURNAL_GLOB))) == 1  # the journal survived
    again = _predict_here([*common, "--output", str(killed)], capsys)
    # batch 2: the kill came during photo 5 (its first mask, the 9th); whole batches before it were journaled
    skipped = int(again.split("skipped ")[1].split()[0])
    assert skipped in (4, 8) and "redid 0" in again, again
    assert _files(killed) == _files(tmp_path / "straight") and not list(killed.glob(JOURNAL_GLOB))


def test_a_resume_with_another_threshold_redoes_every_mask(tiny_model_dir, photos, tmp_path, capsys):
    common = [str(photos), "--model", str(tiny_model_dir), *PROMPTS, "--output", str(tmp_path)]
    _predict_here([*common, "--threshold", "0.5"], capsys)
    same = _predict_here([*common, "--threshold", "0.5"], capsys)
    assert "wrote 0 files" in same and "skipped 24" in same, same
    other = _predict_here([*common, "--threshold", "0.4"], capsys)
    assert "wrote 24 files" in other and "skipped 0" in other and "redid 24" in other
    with open(tmp_path / INDEX_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and {row["threshold"] for row in rows} == {"0.4"} and {row["backend"] for row in rows} == {"torch"}
    forced = _predict_here([*common, "--threshold", "0.4", "--overwrite"], capsys)
    assert "wrote 24 files" in forced and "skipped 0" in forced


def test_input_list_reports_bad_lines_and_segments_the_rest(tiny_model_dir, photos, tmp_path, capsys):
    from clipseg_drywall.predict import main

    names = sorted(photos.iterdir())[:2]
    listing = tmp_path / "photos.txt"
    listing.write_text(f"{names[0]}\n\n{tmp_path / 'missing.jpg'}\n{names[1]}\n   \n")
    code = main(["--input_list", str(listing), "--model", str(tiny_model_dir), "--prompt", "segment crack",
                 "--output", str(tmp_path / "out")])
    assert code == 1  # some inputs failed; the rest are segmented
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{n.stem}__segment-crack.png" for n in names]
    err = capsys.readouterr().err
    assert f"{listing} line 2: empty line" in err and f"{listing} line 5: empty line" in err
    assert f"{tmp_path / 'missing.jpg'}: no such file or folder" in err
    with pytest.raises(SystemExit) as exit_:
        main(["--input_list", str(tmp_path / "nope.txt"), "--model", str(tiny_model_dir), "--prompt", "crack",
              "--output", str(tmp_path / "out2")])
    assert exit_.value.code == 2 and not (tmp_path / "out2").exists()
    assert "error: --input_list" in capsys.readouterr().err


def _one_and_two(job: list[str], output_flag: str, folder: Path) -> tuple[str, str]:
    """Run `job` (script or -m module, with its arguments) as one process into folder/one, then launched
    as two into folder/two; their standard outputs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = []
    for name, launch in (("one", [sys.executable]), ("two", LAUNCH[:-2])):
        run = subprocess.run([*launch, *job, output_flag, str(folder / name)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append(run.stdout)
    return outputs[0], outputs[1]


@pytest.mark.slow
def test_evaluate_over_two_processes_gives_the_metrics_of_one(tiny_model_dir, tiny_disjoint_dir, tmp_path):
    """Each process scores a block of the rows and writes its masks; the gathered per-image counts give the
    same metrics.json, per_image.csv and masks as one process (batch 1: the same kernels for every image)."""
    one, two = _one_and_two(["evaluate.py", "--model_path", str(tiny_model_dir), "--dataset_path",
                             str(tiny_disjoint_dir), "--batch_size", "1", "--latency_images", "0", "--figure_cases",
                             "1"], "--output_dir", tmp_path)
    assert two.count("mIoU") == one.count("mIoU") > 0  # one summary, from the main process
    for name in ("metrics.json", "per_image.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert _files(tmp_path / "two" / "masks") == _files(tmp_path / "one" / "masks")


@pytest.mark.slow
def test_the_report_over_two_processes_finds_what_one_finds(tiny_model_dir, photos, tmp_path):
    _one_and_two(["-m", "clipseg_drywall.report", str(photos), "--model", str(tiny_model_dir), "--threshold", "0.5",
                  "--batch_size", "2"], "--output", tmp_path)
    assert sorted(p.name for p in (tmp_path / "two").glob("journal*.jsonl")) == ["journal-1.jsonl", "journal.jsonl"]
    for name in ("findings.csv", "findings.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert _files(tmp_path / "two" / "masks") == _files(tmp_path / "one" / "masks")
