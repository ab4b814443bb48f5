"""ONNX export and OnnxSegmenter: the folder written, numerics against the PyTorch path, int8, bad input, no torch."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_drywall.prompts import all_prompts
from clipseg_drywall.segmenters import export
from clipseg_drywall.segmenters.onnx import OnnxSegmenter, native_probabilities
from clipseg_drywall.segmenters.onnx_format import (
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    GRAPH_FILES,
    OPSET,
    TOKENIZER_FILE,
    OnnxExportError,
    OnnxRuntimeTooOldError,
    config_fingerprint,
)
from clipseg_drywall.segmenters.pytorch import Segmenter
from clipseg_drywall.upsampling import native_probabilities as torch_native_probabilities

from .helpers import CRACKS, JOINTS, REPO, requires_shared

pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the exporter needs onnx ([test] extra)")

PROMPTS = ["segment crack", "segment taping area", "hairline crack in plaster"]  # the last is outside the vocabulary


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return export.export(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Real photos of both tasks at 640x640, plus a small non-square and a tall crop (down- and upsampling)."""
    if not (CRACKS.is_dir() and JOINTS.is_dir()):
        pytest.skip(f"real data not found in {CRACKS.parent}")
    paths = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[:2] + sorted((JOINTS / "valid").glob("*.jpg"))[:2]
    images = [Image.open(p).convert("RGB") for p in paths]
    return [*images, images[0].crop((0, 0, 480, 320)).resize((301, 203)), images[2].crop((100, 0, 260, 640))]


@pytest.fixture(scope="module")
def pair(tiny_model_dir, onnx_dir, photos) -> tuple[Segmenter, OnnxSegmenter]:
    """Both backends at one threshold: the median probability, so that masks have both values and every
    pixel near the decision shows (the random tiny model's probabilities sit in a narrow band)."""
    reference = Segmenter.from_pretrained(tiny_model_dir, batch_size=3)
    (result,) = reference.iter_segment(photos[:1], PROMPTS[:1], return_probabilities=True)
    reference.threshold = float(np.median(result.probabilities[PROMPTS[0]]))
    return reference, OnnxSegmenter.from_pretrained(onnx_dir, threshold=reference.threshold, batch_size=3)


def test_export_folder(onnx_dir, tiny_model_dir):
    config = json.loads((onnx_dir / CONFIG_FILE).read_text())
    for name in [*GRAPH_FILES.values(), TOKENIZER_FILE, EMBEDDINGS_FILE]:
        assert (onnx_dir / name).is_file(), name
    assert config["opset"] == OPSET and config["image_size"] == 352 and config["extract_layers"] == [0, 1, 2]
    assert config["segmentation_threshold"] == 0.5  # absent from the tiny config: the default
    assert config["preprocessing"] == {"size": [352, 352], "resample": 2, "rescale_factor": 1 / 255,
                                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    stored = np.load(onnx_dir / EMBEDDINGS_FILE)
    assert list(stored["prompts"]) == all_prompts() and stored["embeddings"].shape == (16, 32)
    segmenter = OnnxSegmenter.from_pretrained(onnx_dir, threshold=0.3, batch_size=4)
    assert (segmenter.threshold, segmenter.batch_size) == (0.3, 4)


@requires_shared
def test_preprocessing_matches_processor(pair, photos):
    reference, segmenter = pair
    expected = reference.processor.image_processor(images=photos, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(segmenter.preprocessing.pixel_values(photos), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(352, 352), (640, 640), (203, 301), (640, 160), (17, 1000)])
def test_upsampling_matches_native_probabilities(size):
    logits = np.random.default_rng(0).normal(0, 4, (2, 352, 352)).astype(np.float32)
    expected = torch_native_probabilities(torch.from_numpy(logits), size).numpy()
    np.testing.assert_allclose(native_probabilities(logits, size), expected, rtol=0, atol=2e-6)


@requires_shared
def test_parity_with_pytorch_on_real_photos(pair, photos):
    reference, segmenter = pair
    torch_results = list(reference.iter_segment(photos, PROMPTS, return_probabilities=True))
    onnx_results = list(segmenter.iter_segment(photos, PROMPTS, return_probabilities=True))
    agree = total = 0
    for image, expected, result in zip(photos, torch_results, onnx_results):
        assert result.size == image.size and list(result.masks) == PROMPTS
        for prompt in PROMPTS:
            mask = result.masks[prompt]
            assert mask.dtype == np.uint8 and mask.shape == (image.height, image.width)
            assert set(np.unique(mask)) <= {0, 255}
            agree += int((mask == expected.masks[prompt]).sum())
            total += mask.size
            np.testing.assert_allclose(result.probabilities[prompt], expected.probabilities[prompt], atol=1e-4)
    assert 0.2 < np.mean([m.mean() / 255 for r in onnx_results for m in r.masks.values()]) < 0.8  # masks not trivial
    assert agree / total >= 0.999, f"masks agree on {agree / total:.5%} of pixels"


class CountingSession:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


@requires_shared
def test_one_image_pass_per_batch_and_cached_prompts(onnx_dir, photos):
    segmenter = OnnxSegmenter.from_pretrained(onnx_dir, batch_size=4)
    for role in ("image_encoder", "text_encoder", "decoder"):
        segmenter._sessions[role] = CountingSession(segmenter._sessions[role])
    segmenter.segment(photos, PROMPTS)  # 6 photos in batches of 4: 2 image passes for 3 prompts
    segmenter.segment(photos[:1], PROMPTS)
    runs = {role: session.runs for role, session in segmenter._sessions.items()}
    assert runs == {"image_encoder": 3, "text_encoder": 1, "decoder": 3}  # only the free-text prompt is encoded


def test_prompts_truncated_or_rejected(onnx_dir, photos):
    segmenter = OnnxSegmenter.from_pretrained(onnx_dir)
    with pytest.warns(UserWarning, match="reads only the first 77"):
        long = segmenter.prompt_embeddings(["crack " * 100])
    assert long.shape == (1, 32) and np.isfinite(long).all()
    for bad in ([""], ["  "], []):
        with pytest.raises(ValueError, match="prompt"):
            segmenter.segment(photos[:1], bad)


@requires_shared
def test_int8_export_via_cli(tiny_model_dir, onnx_dir, photos, tmp_path):
    assert export.main(["--model", str(tiny_model_dir), "--output", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    config = json.loads((tmp_path / "int8" / CONFIG_FILE).read_text())
    assert config["quantization"] == "int8"
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / GRAPH_FILES["image_encoder"])).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    quantized = OnnxSegmenter.from_pretrained(tmp_path / "int8")
    (result,) = quantized.iter_segment(photos[:1], PROMPTS, return_probabilities=True)
    (fp32,) = OnnxSegmenter.from_pretrained(onnx_dir).iter_segment(photos[:1], PROMPTS, return_probabilities=True)
    assert result.masks[PROMPTS[0]].shape == (640, 640)
    assert np.abs(result.probabilities[PROMPTS[0]] - fp32.probabilities[PROMPTS[0]]).max() < 0.05


def _copy(onnx_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(onnx_dir, tmp_path / "copy"))


def test_missing_and_corrupt_graphs_name_the_file(onnx_dir, tmp_path):
    folder = _copy(onnx_dir, tmp_path)
    (folder / GRAPH_FILES["decoder"]).unlink()
    with pytest.raises(FileNotFoundError, match="decoder.onnx"):
        OnnxSegmenter.from_pretrained(folder)
    (folder / GRAPH_FILES["decoder"]).write_bytes(b"not a graph")
    with pytest.raises(OnnxExportError, match="decoder.onnx: not a loadable ONNX graph"):
        OnnxSegmenter.from_pretrained(folder)
    (folder / TOKENIZER_FILE).write_text("{")
    shutil.copy(onnx_dir / GRAPH_FILES["decoder"], folder / GRAPH_FILES["decoder"])
    with pytest.raises(OnnxExportError, match="tokenizer.json"):
        OnnxSegmenter.from_pretrained(folder)


def test_graphs_of_another_config_or_export_are_refused(onnx_dir, tmp_path):
    folder = _copy(onnx_dir, tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model_config"]["reduce_dim"] = 64  # a config.json from another model beside these graphs
    config["config_fingerprint"] = config_fingerprint(config["model_config"])
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(OnnxExportError, match="image_encoder.onnx: exported from another model config"):
        OnnxSegmenter.from_pretrained(folder)
    config["model_config"]["reduce_dim"] = 16  # the right config, but edited by hand
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(OnnxExportError, match="config_fingerprint"):
        OnnxSegmenter.from_pretrained(folder)
    config = json.loads((onnx_dir / CONFIG_FILE).read_text())
    config["export_id"] = "0" * 32  # graphs of another export of the same checkpoint
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(OnnxExportError, match="from another export"):
        OnnxSegmenter.from_pretrained(folder)


def test_old_onnxruntime_and_wrong_folders_are_explained(onnx_dir, tiny_model_dir, tmp_path, monkeypatch):
    import onnxruntime

    with pytest.raises(FileNotFoundError, match="no such export folder"):
        OnnxSegmenter.from_pretrained(tmp_path / "missing")
    with pytest.raises(OnnxExportError, match="is a PyTorch checkpoint"):
        OnnxSegmenter.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(onnxruntime, "__version__", "1.12.1")
    with pytest.raises(OnnxRuntimeTooOldError, match=r"image_encoder.onnx: exported with ONNX opset 17.*pip install -U"):
        OnnxSegmenter.from_pretrained(onnx_dir)


def test_export_cli_usage_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    for argv, message in ((["--model", str(tmp_path / "nope"), "--output", str(tmp_path / "out")], "no such folder"),
                          (["--model", str(tiny_model_dir), "--output", str(tmp_path / "a-file")], "is a file")):
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("error:") and message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_export_prints_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    assert exit_info.value.code == 0 and "--quantize" in capsys.readouterr().out


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is not installed (blocked by the test)")

    sys.meta_path.insert(0, Blocked())
""")
NO_TORCH = BLOCK_TORCH + textwrap.dedent("""
    from clipseg_drywall import OnnxSegmenter

    segmenter = OnnxSegmenter.from_pretrained(sys.argv[1], threshold=0.0)
    (masks,) = segmenter.segment([sys.argv[2]], ["segment crack", "a prompt outside the vocabulary"])
    assert masks["segment crack"].shape == (203, 301) and masks["segment crack"].min() == 255
    assert not {"torch", "transformers"} & set(sys.modules)
    print("segmented without torch")
""")


@requires_shared
def test_segments_without_torch_or_transformers(onnx_dir, photos, tmp_path):
    photos[4].save(tmp_path / "photo.png")
    completed = subprocess.run([sys.executable, "-c", NO_TORCH, str(onnx_dir), str(tmp_path / "photo.png")],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "segmented without torch" in completed.stdout


PREDICT_NO_TORCH = BLOCK_TORCH + textwrap.dedent("""
    import runpy
    sys.argv = ["predict", *sys.argv[1:]]
    try:
        runpy.run_module("clipseg_drywall.predict", run_name="__main__")
    finally:
        assert not {"torch", "transformers"} & set(sys.modules)
""")


@requires_shared
def test_predict_command_without_torch_or_transformers(onnx_dir, photos, tmp_path):
    """The predict command itself, `--backend onnx`, where importing torch or transformers fails."""
    photos[0].save(tmp_path / "photo.jpg")
    completed = subprocess.run(
        [sys.executable, "-c", PREDICT_NO_TORCH, str(tmp_path / "photo.jpg"), "--backend", "onnx", "--model",
         str(onnx_dir), "--prompt", "segment crack", "--prompt", "墙上的裂缝", "--output", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    for name in ("photo__segment-crack.png", "photo__墙上的裂缝.png", "index.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    mask = np.asarray(Image.open(tmp_path / "out" / "photo__segment-crack.png"))
    assert mask.shape == (photos[0].height, photos[0].width) and set(np.unique(mask)) <= {0, 255}


@requires_shared
def test_evaluate_scores_an_export_like_its_checkpoint(tiny_model_dir, onnx_dir, tiny_drywall_dir, tmp_path):
    from clipseg_drywall.arguments import EvaluationArguments
    from clipseg_drywall.run_evaluation import evaluate_model

    options = {"dataset_path": str(tiny_drywall_dir), "split": "validation", "threshold": 0.5, "latency_images": 0,
               "prompt_robustness": False, "figure_cases": 0}
    torch_metrics = evaluate_model(EvaluationArguments(model_path=str(tiny_model_dir),
                                                       output_dir=str(tmp_path / "torch"), **options))
    onnx_metrics = evaluate_model(EvaluationArguments(model_path=str(onnx_dir), backend="onnx",
                                                      output_dir=str(tmp_path / "onnx"), **options))
    for task, scores in torch_metrics["tasks"].items():
        assert onnx_metrics["tasks"][task]["miou"] == pytest.approx(scores["miou"], abs=1e-3)
    rows = {name: list(csv.DictReader(open(tmp_path / name / "per_image.csv"))) for name in ("torch", "onnx")}
    fractions = [float(row["predicted_fraction"]) for row in rows["torch"]]
    assert 0 < np.mean(fractions) < 1  # masks with both values: the comparison means something
    assert [float(row["predicted_fraction"]) for row in rows["onnx"]] == pytest.approx(fractions, abs=1e-3)
    with pytest.raises(ValueError, match="--update_model writes into a transformers checkpoint"):
        evaluate_model(EvaluationArguments(model_path=str(onnx_dir), backend="onnx", output_dir=str(tmp_path / "x"),
                                           update_model=True, **options))
