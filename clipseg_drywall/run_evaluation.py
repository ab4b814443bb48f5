"""What `evaluate.py` runs: a checkpoint on a dataset split -> metrics.json, mask PNGs, a figure.

Every image is segmented under both canonical prompts in one vision pass. Scores are at the
image's native resolution and come from the `foreground_iou` evaluate module (definitions in
`metrics.py`). On the validation split a threshold sweep picks the threshold with the best mean
(over tasks) per-image IoU and writes it into the model's config.json; other splits use the
model's saved threshold. Logits are kept at decoder resolution (352x352 floats per pair,
~1 MB per image) so that the sweep and the final masks need one model pass.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPSegConfig, HfArgumentParser

from .figures import Case, case_grid
from .footprint import footprint, model_files_dir
from .foreground_iou import ForegroundIoU
from .inference import Segmenter, load_image, mask_file_name
from .metrics import SegmentationScores, iou_and_dice
from .prompts import TASKS, canonical_prompt, other_task

logger = logging.getLogger(__name__)

SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
METRICS_FILE = "metrics.json"
FIGURE_FILE = "best_worst.png"
MODEL_EVALUATION_DIR = "evaluation"  # inside the model dir: what the card shows and publish uploads


@dataclass
class EvaluationArguments:
    model_path: str = field(metadata={"help": "Checkpoint directory (or Hub id) of a CLIPSegForImageSegmentation."})
    output_dir: str = field(metadata={"help": "Where metrics.json, masks/ and the figure go."})
    dataset_path: str | None = field(default=None, metadata={"help": "A `save_to_disk` DatasetDict directory."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id."})
    split: str = "validation"
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N rows only."})
    batch_size: int = 8
    threshold: float | None = field(default=None, metadata={"help": "Fixed threshold: no sweep, config untouched."})
    sweep: bool | None = field(default=None, metadata={"help": "Threshold sweep (default: on for the validation split)."})
    update_model: bool = field(
        default=True,
        metadata={"help": "Local model dir: write the swept threshold into config.json, copy metrics.json and the "
                          "figure into <model>/evaluation/ and re-render README.md."},
    )
    latency_images: int = field(default=16, metadata={"help": "Images timed for the footprint (0: skip timing)."})
    figure_cases: int = field(default=2, metadata={"help": "Best and worst cases per task in the figure."})
    device: str | None = None
    speed_options: list[str] = field(
        default_factory=list,
        metadata={"help": "Opt-in speed-ups to evaluate (bf16, int8, channels_last, compile): their IoU change is "
                          "what decides whether they may be used. Use with --update_model false."},
    )

    def __post_init__(self):
        if (self.dataset_path is None) == (self.dataset_name is None):
            raise ValueError("Pass exactly one of --dataset_path (a save_to_disk directory) or --dataset_name (a Hub id).")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"--threshold must be in (0, 1), got {self.threshold}")


def load_split(args: EvaluationArguments) -> datasets.Dataset:
    source = args.dataset_path or args.dataset_name
    if args.dataset_path:
        dataset = datasets.load_from_disk(args.dataset_path)
    else:
        dataset = datasets.load_dataset(args.dataset_name)
    if args.split not in dataset:
        raise ValueError(f"{source} has no split {args.split!r} (it has {list(dataset)}); pass --split.")
    split = dataset[args.split]
    if args.max_samples is not None:
        split = split.select(range(min(args.max_samples, len(split))))
    return split


@dataclass
class Predictions:
    """Decoder logits (P, h, w) per row, with what scoring needs; prompts are `canonical_prompt(t)` for `TASKS`."""

    logits: list[torch.Tensor]
    sizes: list[tuple[int, int]]  # (width, height)
    tasks: list[str]
    names: list[str]  # image_id, made unique


def predict_split(segmenter: Segmenter, split: datasets.Dataset, batch_size: int) -> Predictions:
    prompts = [canonical_prompt(t) for t in TASKS]
    out = Predictions([], [], [], [])
    seen: set[str] = set()
    columns = split.select_columns(["image", "task", "image_id"])
    with tqdm(total=len(split), desc="segmenting", unit="image") as progress:
        for batch in columns.iter(batch_size=batch_size):
            images = [load_image(image) for image in batch["image"]]
            out.logits.extend(segmenter.logits(images, prompts).float().cpu())
            out.sizes.extend(image.size for image in images)
            out.tasks.extend(batch["task"])
            for image_id in batch["image_id"]:
                name = image_id if Path(image_id).stem not in seen else f"{Path(image_id).stem}-{len(out.names)}"
                seen.add(Path(name).stem)
                out.names.append(name)
            progress.update(len(images))
    return out


def _targets(split: datasets.Dataset):
    for mask in split.select_columns(["mask"]).iter(batch_size=1):
        yield np.asarray(mask["mask"][0].convert("L"))


def sweep_thresholds(predictions: Predictions, split: datasets.Dataset) -> dict[float, dict[str, float]]:
    """Per threshold: per-task mean per-image IoU under the task's own prompt, and their mean."""
    scores = {t: {task: SegmentationScores() for task in TASKS} for t in SWEEP}
    for logits, size, task, target in zip(predictions.logits, predictions.sizes, predictions.tasks, _targets(split)):
        own = Segmenter.native_probabilities(logits[TASKS.index(task)][None], size)[0]
        for t in SWEEP:
            scores[t][task].add((own > t).numpy(), target)
    table = {}
    for t in SWEEP:
        row = {task: s.compute()["miou"] for task, s in scores[t].items() if s.ious}
        row["mean_iou"] = float(np.mean(list(row.values())))
        table[t] = row
    return table


def best_threshold(table: dict[float, dict[str, float]], current: float) -> float:
    """Highest mean IoU; ties go to the threshold nearest the current one (no change without a gain)."""
    return max(table, key=lambda t: (round(table[t]["mean_iou"], 12), -abs(t - current)))


def score_and_write(
    predictions: Predictions, split: datasets.Dataset, threshold: float, masks_dir: Path
) -> tuple[dict, dict, list[dict]]:
    """(tasks block, prompt_fidelity block, per-image records); writes every (image, prompt) mask PNG."""
    masks_dir.mkdir(parents=True, exist_ok=True)
    metric = {task: ForegroundIoU(keep_in_memory=True) for task in TASKS}
    fidelity = {task: {"other": [], "own": [], "iou": []} for task in TASKS}
    records = []
    rows = zip(predictions.logits, predictions.sizes, predictions.tasks, predictions.names, _targets(split))
    for index, (logits, size, task, name, target) in enumerate(tqdm(rows, total=len(predictions.tasks), desc="scoring")):
        masks = (Segmenter.native_probabilities(logits, size) > threshold).to(torch.uint8).mul_(255).numpy()
        for task_of_mask, mask in zip(TASKS, masks):
            Image.fromarray(mask, mode="L").save(masks_dir / mask_file_name(name, canonical_prompt(task_of_mask)))
        own, other = masks[TASKS.index(task)], masks[TASKS.index(other_task(task))]
        metric[task].add(prediction=own, reference=target)
        fidelity[task]["own"].append(float((own > 0).mean()))
        fidelity[task]["other"].append(float((other > 0).mean()))
        fidelity[task]["iou"].append(iou_and_dice(own, other)[0])
        iou, dice, _, _ = iou_and_dice(own, target)
        records.append({"index": index, "name": name, "task": task, "iou": iou, "dice": dice,
                        "target_fraction": float((target > 127).mean())})
    tasks = {}
    for task in TASKS:
        if any(r["task"] == task for r in records):
            tasks[task] = {"prompt": canonical_prompt(task), **metric[task].compute()}
    prompt_fidelity = {
        task: {
            "other_prompt": canonical_prompt(other_task(task)),
            "foreground_fraction_other_prompt": float(np.mean(f["other"])),
            "foreground_fraction_own_prompt": float(np.mean(f["own"])),
            "iou_between_prompts": float(np.mean(f["iou"])),
            "n_images": len(f["own"]),
        }
        for task, f in fidelity.items()
        if f["own"]
    }
    return tasks, prompt_fidelity, records


def figure_cases(records: list[dict], split: datasets.Dataset, masks_dir: Path, per_task: int) -> list[Case]:
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
        raise ValueError(f"split {args.split!r} of {args.dataset_path or args.dataset_name} is empty")
    predictions = predict_split(segmenter, split, args.batch_size)

    sweep = args.sweep if args.sweep is not None else (args.split == "validation" and args.threshold is None)
    table = sweep_thresholds(predictions, split) if sweep else None
    if args.threshold is not None:
        threshold, source = args.threshold, "argument"
    elif table is not None:
        threshold, source = best_threshold(table, segmenter.threshold), f"sweep on {args.split}"
    else:
        threshold, source = segmenter.threshold, "model config"

    tasks, fidelity, records = score_and_write(predictions, split, threshold, output_dir / "masks")
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
        lines.append(f"{task:7s} foreground under {f['other_prompt']!r}: {f['foreground_fraction_other_prompt']:.4f}; "
                     f"IoU between prompts {f['iou_between_prompts']:.4f}")
    if "footprint" in metrics:
        fp = metrics["footprint"]
        lines.append(f"{fp['params_total']:,} params, {fp['size_on_disk_mb']} MB, {fp['inference_ms_per_image']} ms/image "
                     f"(batch 1), {fp['inference_ms_per_image_batched']} ms/image (batch {fp['batch_size']}) on {fp['device']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser(EvaluationArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(json_file=argv[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    metrics = evaluate_model(args)
    print(format_metrics(metrics))
    print(f"wrote {Path(args.output_dir) / METRICS_FILE}")
    return 0
