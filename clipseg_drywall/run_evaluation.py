"""The evaluation job (`evaluate.py`, `clipseg-drywall-evaluate`): a checkpoint on a dataset split ->
metrics.json, mask PNGs, a figure.

Every image is segmented under both canonical prompts in one vision pass; its own task's prompt is
scored against its mask, the other task's prompt against an empty mask (prompt fidelity). Scores come
from `evaluation` (the package's one scoring path) at native resolution. On the validation split a
threshold sweep, computed from the same per-image statistics, picks the threshold with the best mean
(over tasks) per-image IoU and writes it into the model's config.json; other splits use the model's
saved threshold. Logits are kept at decoder resolution (about 0.5 MB per image at 352 px) so that
the sweep and the final masks need one model pass.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPSegConfig

from .arguments import EvaluationArguments, load_dataset_dict, parse_arguments, select_split
from .evaluation import SWEEP, ImageStatistics, best_threshold, image_statistics, sweep, task_scores, thresholds_with
from .figures import Case, case_grid
from .footprint import footprint, model_files_dir
from .images import load_image
from .inference import Segmenter, mask_file_name
from .metrics import dice, iou, scores_from_counts
from .modeling import native_probabilities
from .prompts import TASKS, canonical_prompt, other_task

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FIGURE_FILE = "best_worst.png"
MODEL_EVALUATION_DIR = "evaluation"  # inside the model dir: what the card shows and publish uploads
SWEEP_SET = set(SWEEP)


@dataclass
class Predictions:
    """Decoder logits (len(TASKS), h, w) per row under `canonical_prompt(t)` for t in `TASKS`."""

    logits: list[torch.Tensor]
    sizes: list[tuple[int, int]]  # (height, width) of each image
    tasks: list[str]
    names: list[str]  # image_id, made unique

    def native(self, index: int) -> torch.Tensor:
        """Probabilities (len(TASKS), height, width) of row `index` at its image's size."""
        return native_probabilities(self.logits[index], self.sizes[index])


def load_split(args: EvaluationArguments):
    return select_split(load_dataset_dict(args), args.split, args.dataset_source, args.max_samples)


def predict_split(segmenter: Segmenter, split, batch_size: int) -> Predictions:
    prompts = [canonical_prompt(t) for t in TASKS]
    out = Predictions([], [], [], [])
    seen: set[str] = set()
    columns = split.select_columns(["image", "task", "image_id"])
    with tqdm(total=len(split), desc="segmenting", unit="image") as progress:
        for batch in columns.iter(batch_size=batch_size):
            images = [load_image(image) for image in batch["image"]]
            out.logits.extend(segmenter.logits(images, prompts).float().cpu())
            out.sizes.extend((image.height, image.width) for image in images)
            out.tasks.extend(batch["task"])
            for image_id in batch["image_id"]:
                name = image_id if Path(image_id).stem not in seen else f"{Path(image_id).stem}-{len(out.names)}"
                seen.add(Path(name).stem)
                out.names.append(name)
            progress.update(len(images))
    return out


def _targets(split) -> Iterator[torch.Tensor]:
    for mask in split.select_columns(["mask"]).iter(batch_size=1):
        yield torch.from_numpy(np.asarray(mask["mask"][0].convert("L")) > 127)


def score_predictions(predictions: Predictions, split, thresholds: Sequence[float]) -> ImageStatistics:
    """Two statistics rows per image, in order: its own task's prompt against its mask, then the
    other task's prompt against an empty mask."""
    parts = []
    rows = zip(range(len(predictions.tasks)), predictions.tasks, _targets(split))
    for index, task, target in tqdm(rows, total=len(predictions.tasks), desc="scoring", unit="image"):
        probabilities = predictions.native(index)
        own, other = TASKS.index(task), TASKS.index(other_task(task))
        parts.append(image_statistics([probabilities[own], probabilities[other]], [target, torch.zeros_like(target)],
                                      [own, own], [False, True], thresholds))
    return ImageStatistics.concatenate(parts, thresholds)


def write_masks(predictions: Predictions, threshold: float, masks_dir: Path) -> None:
    """One {0,255} PNG per (image, canonical prompt), at the image's size."""
    masks_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(tqdm(predictions.names, desc="writing masks", unit="image")):
        masks = (predictions.native(index) > threshold).to(torch.uint8).mul_(255).numpy()
        for task, mask in zip(TASKS, masks):
            Image.fromarray(mask, mode="L").save(masks_dir / mask_file_name(name, canonical_prompt(task)))


def per_image_records(predictions: Predictions, statistics: ImageStatistics, threshold: float) -> list[dict]:
    """Per image under its own task's prompt: IoU, Dice, predicted and true foreground fractions."""
    column = statistics.column(threshold)
    own = statistics.select(~statistics.negative)
    counts = own.intersection[:, column], own.predicted[:, column], own.target
    ious, dices = iou(*counts), dice(*counts)
    return [
        {"index": i, "name": name, "task": task, "prompt": canonical_prompt(task), "iou": float(ious[i]),
         "dice": float(dices[i]), "predicted_fraction": float(counts[1][i] / own.pixels[i]),
         "target_fraction": float(own.target[i] / own.pixels[i])}
        for i, (name, task) in enumerate(zip(predictions.names, predictions.tasks))
    ]


def summary_blocks(statistics: ImageStatistics, threshold: float) -> tuple[dict, dict]:
    """(tasks block, prompt_fidelity block) of metrics.json."""
    column = statistics.column(threshold)
    scores = task_scores(statistics, threshold)
    tasks, fidelity = {}, {}
    for task_id, task in enumerate(TASKS):
        own = statistics.select((statistics.task_id == task_id) & ~statistics.negative)
        if not len(own):
            continue
        tasks[task] = {"prompt": canonical_prompt(task),
                       **scores_from_counts(own.intersection[:, column], own.predicted[:, column], own.target)}
        fidelity[task] = {
            "other_prompt": canonical_prompt(other_task(task)),
            "foreground_fraction_other_prompt": scores.get(f"wrong_prompt_foreground_{task}", float("nan")),
            "foreground_fraction_own_prompt": scores[f"predicted_fraction_{task}"],
            "n_images": len(own),
        }
    return tasks, fidelity


def figure_cases(records: list[dict], split, masks_dir: Path, per_task: int) -> list[Case]:
    """The `per_task` best (highest IoU, largest target first) and worst cases of each task."""
    cases = []
    for task in TASKS:
        ranked = sorted((r for r in records if r["task"] == task), key=lambda r: (r["iou"], r["target_fraction"]))
        picked = [("best", r) for r in ranked[::-1][:per_task]] + [("worst", r) for r in ranked[:per_task]]
        for kind, record in picked[: 2 * min(per_task, len(ranked))]:
            row = split[record["index"]]
            prediction = np.asarray(Image.open(masks_dir / mask_file_name(record["name"], canonical_prompt(task))))
            cases.append(Case(f"{task} {kind}: IoU {record['iou']:.3f}\n{record['name'][:40]}",
                              load_image(row["image"]), np.asarray(row["mask"].convert("L")), prediction))
    return cases


def set_model_threshold(model_dir: Path, threshold: float) -> None:
    """Rewrite config.json with the new `segmentation_threshold` (every other key kept)."""
    config = CLIPSegConfig.from_pretrained(model_dir)
    config.segmentation_threshold = threshold
    config.save_pretrained(model_dir)


def evaluate_model(args: EvaluationArguments) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter.from_pretrained(args.model_path, batch_size=args.batch_size, device=args.device,
                                          speed_options=args.speed_options)
    split = load_split(args)
    if len(split) == 0:
        raise ValueError(f"split {args.split!r} of {args.dataset_source} is empty")
    predictions = predict_split(segmenter, split, args.batch_size)

    do_sweep = args.sweep if args.sweep is not None else (args.split == "validation" and args.threshold is None)
    fixed = args.threshold if args.threshold is not None else segmenter.threshold
    statistics = score_predictions(predictions, split, thresholds_with(fixed))
    table = {t: row for t, row in sweep(statistics).items() if t in SWEEP_SET} if do_sweep else None
    if args.threshold is not None:
        threshold, source = args.threshold, "argument"
    elif table is not None:
        threshold, source = best_threshold(table, segmenter.threshold), f"sweep on {args.split}"
    else:
        threshold, source = segmenter.threshold, "model config"

    write_masks(predictions, threshold, output_dir / "masks")
    tasks, fidelity = summary_blocks(statistics, threshold)
    records = per_image_records(predictions, statistics, threshold)
    metrics = {
        "model": str(args.model_path),
        "dataset": {"path": args.dataset_path, "name": args.dataset_name, "split": args.split, "n_rows": len(split)},
        "tasks": tasks,
        "mean_iou": float(np.mean([t["miou"] for t in tasks.values()])),
        "threshold": threshold,
        "threshold_source": source,
        "threshold_sweep": {str(t): row for t, row in table.items()} if table else None,
        "prompt_fidelity": fidelity,
    }
    if args.latency_images > 0:
        images = [load_image(image) for image in split.select(range(min(args.latency_images, len(split))))["image"]]
        prompts = [canonical_prompt(t) for t in TASKS]
        metrics["footprint"] = footprint(segmenter, model_files_dir(args.model_path), images, prompts, args.batch_size)
    cases = figure_cases(records, split, output_dir / "masks", args.figure_cases)
    if cases:
        case_grid(cases, output_dir / FIGURE_FILE)
        metrics["figure"] = FIGURE_FILE
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    model_dir = Path(args.model_path)
    if args.update_model and model_dir.is_dir():
        update_model_dir(model_dir, output_dir, threshold if source.startswith("sweep") else None)
    return metrics


def update_model_dir(model_dir: Path, output_dir: Path, threshold: float | None) -> None:
    """The calibrated threshold into config.json; metrics + figure beside the weights; the card re-rendered."""
    from .model_card import write_model_card

    if threshold is not None:
        set_model_threshold(model_dir, threshold)
    target = model_dir / MODEL_EVALUATION_DIR
    target.mkdir(exist_ok=True)
    for name in (METRICS_FILE, FIGURE_FILE):
        if (output_dir / name).is_file():
            shutil.copyfile(output_dir / name, target / name)
    write_model_card(model_dir)


def format_metrics(metrics: dict) -> str:
    lines = [f"threshold {metrics['threshold']} ({metrics['threshold_source']})"]
    for task, m in metrics["tasks"].items():
        lines.append(f"{task:7s} mIoU {m['miou']:.4f}  Dice {m['dice']:.4f}  dataset IoU {m['dataset_iou']:.4f}  "
                     f"({m['n_images']} images, prompt {m['prompt']!r})")
    for task, f in metrics["prompt_fidelity"].items():
        lines.append(f"{task:7s} foreground under {f['other_prompt']!r}: {f['foreground_fraction_other_prompt']:.4f} "
                     f"(under its own prompt: {f['foreground_fraction_own_prompt']:.4f})")
    if "footprint" in metrics:
        fp = metrics["footprint"]
        lines.append(f"{fp['params_total']:,} params, {fp['size_on_disk_mb']} MB, {fp['inference_ms_per_image']} ms/image "
                     f"(batch 1), {fp['inference_ms_per_image_batched']} ms/image (batch {fp['batch_size']}) on {fp['device']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_arguments((EvaluationArguments,), argv)
    metrics = evaluate_model(args)
    print(format_metrics(metrics))
    print(f"wrote {Path(args.output_dir) / METRICS_FILE}")
    return 0
