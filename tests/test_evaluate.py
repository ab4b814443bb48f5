"""`python evaluate.py` from the repo root: metrics.json, mask PNGs recomputed independently, threshold, card."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import evaluate
from clipseg_drywall.naming import mask_file_name
from clipseg_drywall.prompts import PROMPTS, TASKS, canonical_prompt

from . import foreground_iou_metric
from .helpers import REPO, requires_shared


def test_import_evaluate_is_the_library():
    """The repo root is on sys.path under pytest: `import evaluate` must still be the library."""
    import evaluate

    assert hasattr(evaluate, "Metric") and "site-packages" in evaluate.__file__


def test_metric_module_loads_offline_and_matches_metrics_py():
    import evaluate

    from . import foreground_iou_metric as module

    rng = np.random.default_rng(0)
    predictions = [rng.random((20, 30)) > 0.5, np.zeros((5, 5), bool), np.full((4, 6), 255, np.uint8)]
    references = [rng.random((20, 30)) > 0.6, np.zeros((5, 5), np.uint8), np.zeros((4, 6), np.uint8)]
    # by hand: per-image IoU / Dice (both-empty scores 1), dataset IoU from summed counts
    p, r = predictions[0], references[0]
    inter = [int((p & r).sum()), 0, 0]
    union = [int((p | r).sum()), 0, 24]
    sizes = [int(p.sum() + r.sum()), 0, 24]
    expected = {"miou": (inter[0] / union[0] + 1 + 0) / 3, "dice": (2 * inter[0] / sizes[0] + 1 + 0) / 3,
                "dataset_iou": inter[0] / (union[0] + 24), "n_images": 3}
    for metric in (evaluate.load(module.__file__, keep_in_memory=True), module.ForegroundIoU(keep_in_memory=True)):
        assert metric.compute(predictions=predictions, references=references) == pytest.approx(expected)
    # both empty scores 1; background is not averaged in
    assert module.ForegroundIoU(keep_in_memory=True).compute(
        predictions=[np.zeros((3, 3), bool)], references=[np.zeros((3, 3), bool)])["miou"] == 1.0


def _evaluate(model_dir, data_dir, output_dir, *extra: str) -> dict:
    command = [sys.executable, "evaluate.py", "--model_path", str(model_dir), "--dataset_path", str(data_dir),
               "--output_dir", str(output_dir), "--batch_size", "2", "--latency_images", "2", "--figure_cases", "1",
               *extra]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tiny_disjoint_dir, tiny_drywall_dir, tmp_path_factory):
    """A copy of the tiny model evaluated by the script (`--update_model`), from the repo root: on the official validation
    split (threshold calibrated on train), then with the defaults on the source-disjoint data
    (calibrated on validation, scored on test)."""
    root = tmp_path_factory.mktemp("evaluated")
    model_dir = root / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    official = _evaluate(model_dir, tiny_drywall_dir, root / "official", "--split", "validation",
                         "--calibration_split", "train", "--update_model")
    honest = _evaluate(model_dir, tiny_disjoint_dir, root / "eval", "--update_model")
    return model_dir, root / "eval", honest, official


@requires_shared
def test_metrics_json_shape(evaluated):
    _, output_dir, metrics, _ = evaluated
    assert metrics["dataset"]["split"] == "test" and metrics["dataset"]["layout"] == "source-disjoint"
    assert metrics["dataset"]["leaked_images"] == {"crack": 0, "taping": 0}
    assert set(metrics["tasks"]) == set(TASKS)
    for task, block in metrics["tasks"].items():
        assert block["prompt"] == canonical_prompt(task)
        assert {"miou", "dice", "dataset_iou", "n_images", "ci95"} <= set(block) and block["n_images"] == 3
        for key in ("miou", "dice", "dataset_iou"):
            low, high = block["ci95"][key]
            assert low <= block[key] <= high
        fidelity = metrics["prompt_fidelity"][task]
        assert {"foreground_fraction_other_prompt", "foreground_fraction_own_prompt"} <= set(fidelity)
    calibration = metrics["calibration"]
    assert 0.05 <= metrics["threshold"] <= 0.95 and metrics["threshold_source"] == "sweep on validation"
    assert calibration["split"] == "validation" and not metrics["threshold_tuned_on_scored_split"]
    assert len(calibration["sweep"]) == 19
    best = max(row["mean_iou"] for row in calibration["sweep"].values())
    assert calibration["sweep"][str(metrics["threshold"])]["mean_iou"] == best
    prompts = {(row["task"], row["prompt"]): row for row in metrics["prompts"]}
    assert len(prompts) == len(PROMPTS["crack"]) + len(PROMPTS["taping"]) + 4
    assert not prompts[("crack", "hairline crack in plaster")]["in_vocabulary"]
    assert prompts[("taping", "segment taping area")]["miou"] == pytest.approx(metrics["tasks"]["taping"]["miou"])
    footprint = metrics["footprint"]
    assert {"params_total", "params_trainable", "size_on_disk_mb", "inference_ms_per_image",
            "inference_ms_per_image_batched", "device", "peak_memory_mb"} <= set(footprint)
    assert footprint["params_total"] > 0 and footprint["size_on_disk_mb"] > 0
    assert (output_dir / metrics["figure"]).is_file()


@requires_shared
def test_per_image_csv_and_pngs_match_metrics(evaluated, tiny_disjoint_dir):
    """Masks re-read from the PNGs and scored here, independently, give the CSV rows and the summary."""
    _, output_dir, metrics, _ = evaluated
    rows = datasets.load_from_disk(str(tiny_disjoint_dir))["test"]
    with (output_dir / "per_image.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["image_id"] for r in table] == rows["image_id"]
    per_task: dict[str, list[tuple[float, float, int, int]]] = {t: [] for t in TASKS}
    # the same masks through the `evaluate` library's machinery, a second route to the summary
    cross_check = {task: evaluate.load(foreground_iou_metric.__file__, keep_in_memory=True) for task in TASKS}
    for row, record in zip(rows, table):
        target = np.asarray(row["mask"]) == 255
        for task in TASKS:  # a PNG per (image, prompt), single-channel {0,255}, the image's size
            png = Image.open(output_dir / "masks" / mask_file_name(row["image_id"], canonical_prompt(task)))
            assert png.mode == "L" and png.size == row["image"].size
            assert set(np.unique(np.asarray(png))) <= {0, 255}
        prediction = np.asarray(Image.open(output_dir / "masks" / mask_file_name(row["image_id"], canonical_prompt(row["task"])))) == 255
        inter, union = int((prediction & target).sum()), int((prediction | target).sum())
        total = int(prediction.sum() + target.sum())
        iou, dice = 1.0 if union == 0 else inter / union, 1.0 if total == 0 else 2 * inter / total
        assert (record["task"], record["prompt"]) == (row["task"], canonical_prompt(row["task"]))
        assert float(record["iou"]) == pytest.approx(iou) and float(record["dice"]) == pytest.approx(dice)
        assert float(record["predicted_fraction"]) == pytest.approx(prediction.mean())
        assert float(record["true_fraction"]) == pytest.approx(target.mean())
        per_task[row["task"]].append((iou, dice, inter, union))
        cross_check[row["task"]].add(prediction=prediction, reference=target)
    for task, scores in per_task.items():
        reported = metrics["tasks"][task]
        assert cross_check[task].compute() == pytest.approx(
            {key: reported[key] for key in ("miou", "dice", "dataset_iou", "n_images")}, abs=1e-6)
        assert np.mean([s[0] for s in scores]) == pytest.approx(reported["miou"], abs=1e-6)
        assert np.mean([s[1] for s in scores]) == pytest.approx(reported["dice"], abs=1e-6)
        union = sum(s[3] for s in scores)
        assert (sum(s[2] for s in scores) / union if union else 1.0) == pytest.approx(reported["dataset_iou"], abs=1e-6)


@requires_shared
def test_threshold_and_card_written_into_model(evaluated):
    from huggingface_hub import ModelCard

    model_dir, _, metrics, official = evaluated
    assert json.loads((model_dir / "config.json").read_text())["segmentation_threshold"] == metrics["threshold"]
    stored = model_dir / "evaluation"
    assert (stored / "source-disjoint_test.json").is_file() and (stored / "source-disjoint_test.png").is_file()
    assert (stored / "default_validation.json").is_file()
    card = ModelCard.load(model_dir / "README.md")
    honest = card.text.index("Source-disjoint `test` split (the honest estimate)")
    leaky = card.text.index("Official Roboflow `validation` split")
    assert honest < leaky and "**Leaky:**" in card.text[leaky:]
    assert f"{metrics['tasks']['crack']['miou']:.4f}" in card.text[honest:leaky]
    assert f"{official['tasks']['crack']['miou']:.4f}" in card.text[leaky:]
    low, high = metrics["tasks"]["taping"]["ci95"]["miou"]
    assert f"[{low:.3f}, {high:.3f}]" in card.text
    assert '"hairline crack in plaster"' in card.text and "paraphrase" in card.text
    assert f"{metrics['footprint']['params_total']:,}" in card.text
    assert "evaluation/source-disjoint_test.png" in card.text


@requires_shared
def test_card_metadata_round_trips_and_indexes_the_honest_split(evaluated):
    from huggingface_hub import ModelCard, ModelCardData

    model_dir, _, metrics, _ = evaluated
    data = ModelCard.load(model_dir / "README.md").data
    again = ModelCardData(**data.to_dict())
    assert again.to_dict() == data.to_dict()
    assert (data.base_model, data.library_name, data.pipeline_tag, data.license) == (
        "CIDAS/clipseg-rd64-refined", "transformers", "image-segmentation", "apache-2.0")
    assert not data.get("datasets")  # no run record: no dataset id to name
    found = {(r.dataset_config, r.metric_type): (r.metric_value, r.dataset_split) for r in again.eval_results}
    assert {split for _, split in found.values()} == {"test"}
    for task in TASKS:
        assert found[(f"source-disjoint/{task}", "iou")] == (pytest.approx(metrics["tasks"][task]["miou"], abs=1e-4), "test")
        assert found[(f"source-disjoint/{task}", "dice")] == (pytest.approx(metrics["tasks"][task]["dice"], abs=1e-4), "test")


@requires_shared
def test_calibrating_on_the_scored_split_is_refused_unless_asked(evaluated, tiny_disjoint_dir, tmp_path):
    from clipseg_drywall.arguments import EvaluationArguments
    from clipseg_drywall.run_evaluation import evaluate_model

    model_dir, _, _, _ = evaluated
    before = {p.name: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    options = {"model_path": str(model_dir), "dataset_path": str(tiny_disjoint_dir), "split": "validation",
               "latency_images": 0, "prompt_robustness": False}  # no threshold flag, no --update_model
    with pytest.raises(ValueError, match="refusing to score split 'validation' with a threshold tuned on that same"):
        evaluate_model(EvaluationArguments(output_dir=str(tmp_path / "refused"), **options))
    assert not (tmp_path / "refused").exists()
    metrics = evaluate_model(EvaluationArguments(output_dir=str(tmp_path / "allowed"),
                                                 allow_calibration_on_scored_split=True, **options))
    assert metrics["threshold_tuned_on_scored_split"] and metrics["prompts"] is None
    assert json.loads((tmp_path / "allowed" / "metrics.json").read_text())["threshold_tuned_on_scored_split"]
    assert {p.name: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()} == before  # a calibration, yet
    # the model folder is as it was: only --update_model writes into it


@requires_shared
def test_fixed_threshold_on_another_split_keeps_config(evaluated, tiny_drywall_dir, tmp_path):
    from clipseg_drywall.arguments import EvaluationArguments
    from clipseg_drywall.run_evaluation import evaluate_model

    model_dir, _, _, _ = evaluated
    before = (model_dir / "config.json").read_text()
    metrics = evaluate_model(EvaluationArguments(
        model_path=str(model_dir), dataset_path=str(tiny_drywall_dir), split="train", max_samples=2,
        output_dir=str(tmp_path), threshold=0.3, latency_images=0, update_model=False))
    assert metrics["threshold"] == 0.3 and "sweep" not in metrics["calibration"] and "footprint" not in metrics
    assert (model_dir / "config.json").read_text() == before
    with pytest.raises(ValueError, match="no split 'nope'"):
        evaluate_model(EvaluationArguments(model_path=str(model_dir), dataset_path=str(tiny_drywall_dir),
                                           split="nope", output_dir=str(tmp_path)))


@requires_shared
def test_card_names_the_evaluation_that_wrote_the_threshold(evaluated, tiny_drywall_dir, tmp_path):
    """The last `--update_model` calibration wrote config.json's threshold: the card names it, not the
    evaluation that sorts first (the honest one)."""
    from huggingface_hub import ModelCard

    from clipseg_drywall.arguments import EvaluationArguments
    from clipseg_drywall.run_evaluation import evaluate_model

    model_dir = tmp_path / "model"
    shutil.copytree(evaluated[0], model_dir)
    metrics = evaluate_model(EvaluationArguments(
        model_path=str(model_dir), dataset_path=str(tiny_drywall_dir), split="validation", calibration_split="train",
        max_samples=4, output_dir=str(tmp_path / "eval"), latency_images=0, prompt_robustness=False, update_model=True))
    assert json.loads((model_dir / "config.json").read_text())["segmentation_threshold"] == metrics["threshold"]
    card = ModelCard.load(model_dir / "README.md").text
    assert f"# {metrics['threshold']}, sweep on train (evaluation default_validation)" in card
    # a threshold set by hand afterwards is not credited to any evaluation
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "segmentation_threshold": 0.123}))
    from clipseg_drywall.model_card import render_model_card

    assert "# 0.123, set in config.json at training" in render_model_card(model_dir).text


@requires_shared
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc/self/fd (Linux)")
def test_a_mask_that_fails_to_read_leaves_no_file_open(evaluated, tiny_disjoint_dir, tmp_path):
    """Pillow closes a fully read PNG by itself, but not one whose read fails: the figure must close it."""
    from clipseg_drywall.data import select_split
    from clipseg_drywall.run_evaluation import figure_cases

    _, output_dir, _, _ = evaluated
    records = [dict(r, iou=float(r["iou"]), true_fraction=float(r["true_fraction"]), index=i)
               for i, r in enumerate(csv.DictReader((output_dir / "per_image.csv").open()))]
    split = select_split(datasets.load_from_disk(str(tiny_disjoint_dir)), "test", "tiny")
    masks = tmp_path / "masks"
    shutil.copytree(output_dir / "masks", masks)
    for png in masks.glob("*.png"):
        png.write_bytes(png.read_bytes()[:200])  # a valid header, then cut: the read fails mid-way
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as caught:  # keeps the failed frames (and their images) alive, as a caller would
        figure_cases(records, split, masks, per_task=1)
    assert caught.value is not None and len(os.listdir("/proc/self/fd")) == before
