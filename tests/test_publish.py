"""Publishing without the network: what goes up, the token never shows, and the offline consumer path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipseg_drywall.publish import files_to_upload

from .helpers import CRACKS, REPO, requires_shared

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with the debris a training run leaves beside it."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    for name in ("pytorch_model.bin", "optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"):
        (path / name).write_bytes(b"pickle")
    (path / "checkpoint-10").mkdir()
    (path / "checkpoint-10" / "model.safetensors").write_bytes(b"x")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, **extra}


def test_only_safe_files_go_up(model_dir):
    files = files_to_upload(model_dir)
    assert "model.safetensors" in files and "config.json" in files and "tokenizer_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth")) or "checkpoint-" in f or "optimizer" in f]


@pytest.mark.slow
def test_dry_run_lists_files_and_hides_token(model_dir):
    command = [sys.executable, "-m", "clipseg_drywall.publish", "--model_dir", str(model_dir),
               "--repo_id", "org/clipseg-drywall", "--dry_run"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=_env(HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr
    assert "model.safetensors" in run.stdout and "README.md" in run.stdout and ".bin" not in run.stdout
    assert FAKE_TOKEN not in run.stdout + run.stderr
    assert not (model_dir / "README.md").exists()  # the folder is left as it was
    run = subprocess.run([*command, "--write_card"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=_env(HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr
    assert "org/clipseg-drywall" in (model_dir / "README.md").read_text()  # card rendered for the repo
    # a real upload cannot run here: it fails cleanly, without the token in the message
    run = subprocess.run(command[:-1], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=_env(HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE="1"))
    assert run.returncode == 1 and "publishing to org/clipseg-drywall failed" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert FAKE_TOKEN not in run.stdout + run.stderr


def test_missing_weights_named(tmp_path, capsys):
    from clipseg_drywall.publish import main

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_dir", str(tmp_path), "--repo_id", "org/x", "--dry_run"])
    assert exit_info.value.code == 2
    assert "model.safetensors" in capsys.readouterr().err and not (tmp_path / "README.md").exists()


CONSUMER = """
import sys, numpy as np
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor
from clipseg_drywall import Segmenter
CLIPSegForImageSegmentation.from_pretrained("org/clipseg-drywall")
CLIPSegProcessor.from_pretrained("org/clipseg-drywall")
masks = Segmenter.from_pretrained("org/clipseg-drywall", threshold=float(sys.argv[2])).segment([sys.argv[1]], ["segment crack", "segment taping area"])[0]
np.savez(sys.argv[3], **{k.replace(" ", "_"): v for k, v in masks.items()})
"""


@pytest.mark.slow
@requires_shared
def test_offline_consumer_path_from_hub_cache(model_dir, tmp_path):
    """The published files laid out as a Hub cache entry load by repo id with HF_HUB_OFFLINE=1."""
    from clipseg_drywall.segmenters.pytorch import Segmenter

    cache = tmp_path / "hub-cache"
    revision = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / "models--org--clipseg-drywall"
    for name in files_to_upload(model_dir):
        target = entry / "snapshots" / revision / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / name, target)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)

    image = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[0]
    local = Segmenter.from_pretrained(model_dir)
    (result,) = local.iter_segment([image], ["segment crack"], return_probabilities=True)
    threshold = float(np.median(result.probabilities["segment crack"]))  # masks with both values
    expected = local.segment([image], ["segment crack", "segment taping area"], threshold=threshold)[0]

    out = tmp_path / "masks.npz"
    run = subprocess.run([sys.executable, "-c", CONSUMER, str(image), repr(threshold), str(out)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env=_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(out)
    for prompt, mask in expected.items():
        assert 0 < (mask > 0).mean() < 1
        np.testing.assert_array_equal(got[prompt.replace(" ", "_")], mask)
