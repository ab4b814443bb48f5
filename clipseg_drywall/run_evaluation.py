"""The evaluation job (`evaluate.py`, `clipseg-drywall-evaluate`): a checkpoint on a dataset split ->
metrics.json, per_image.csv, mask PNGs, a figure.

The protocol keeps the numbers honest:
- the threshold is swept on `--calibration_split` (default validation) and the scores come from
  `--split` (default test, where the dataset has one); tuning on the scored split is refused unless
  `--allow_calibration_on_scored_split`, and then metrics.json and the card say so;
- each task's mIoU, Dice and dataset IoU come with a seeded 95% bootstrap interval over images;
- every vocabulary prompt and a few paraphrases are scored on their task's images (prompt
  robustness), and each image under the other task's canonical prompt (prompt fidelity);
- the dataset's own leakage check (stats.json of the build) says whether the scored split shares
  source photos with train.
Every number comes from `scoring` (the package's one scoring path) at native resolution: one
vision pass per image for all prompts, each mask scored once at every threshold.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import distributed, pipeline
from .arguments import EvaluationArguments, parse_arguments
from .atomic_files import atomic_path, check_writable_folder, save_mask
from .case_grid import Case, case_grid
from .cli import check_model_source, user_errors
from .data import LAYOUT_KEY, OFFICIAL_LAYOUT, leaked_images, load_dataset_dict, read_build_stats, select_split
from .images import ImageLoadError, load_image
from .model_card import store_evaluation
from .model_cost import footprint, model_files_dir
from .naming import mask_file_name
from .pipeline import Done, LogitsHead, PipelineOptions, Work, batches_of
from .prompts import TASKS, canonical_prompt, other_task, robustness_prompts, task_of_prompt
from .scoring import (
    SWEEP,
    ImageStatistics,
    best_threshold,
    image_statistics,
    per_image_scores,
    sweep,
    task_summary,
    thresholds_with,
)
from .segmenters import load_segmenter
from .segmenters.base import BatchedSegmenter
from .upsampling import native_probabilities, threshold_masks

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
FIGURE_FILE = "best_worst.png"


@dataclass
class ScoredSplit:
    """One pass over a split (or a process's share of it): the statistics of every pair, no logits kept."""

    tasks: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # image_id, made unique over the whole split
    statistics: ImageStatistics | None = None  # per image: own canonical prompt, then the other task's
    per_prompt: dict[str, ImageStatistics] = field(default_factory=dict)  # prompt -> its task's images

    @classmethod
    def concatenate(cls, parts: Sequence[ScoredSplit], thresholds: Sequence[float]) -> ScoredSplit:
        """The shares of the processes, in process order, as one split (one process's result, exactly)."""
        prompts = list(dict.fromkeys(p for part in parts for p in part.per_prompt))
        return cls(tasks=[t for part in parts for t in part.tasks], names=[n for part in parts for n in part.names],
                   statistics=ImageStatistics.concatenate([part.statistics for part in parts], thresholds),
                   per_prompt={p: ImageStatistics.concatenate([part.per_prompt[p] for part in parts if p in part.per_prompt],
                                                              thresholds) for p in prompts})


def unique_names(image_ids: Sequence[str]) -> list[str]:
    """Each image's file name for its masks: its image_id, or `<stem>-<row>` after a repeated stem."""
    seen: set[str] = set()
    names = []
    for index, image_id in enumerate(image_ids):
        name = image_id if Path(image_id).stem not in seen else f"{Path(image_id).stem}-{index}"
        seen.add(Path(name).stem)
        names.append(name)
    return names


def segment_and_score(segmenter: BatchedSegmenter, split, batch_size: int, thresholds: Sequence[float],
                      robustness: bool, desc: str, masks: tuple[float, Path] | None = None,
                      rows: Sequence[int] | None = None) -> ScoredSplit:
    """Segment every image (of `rows`, default all) under every prompt needed (one vision pass) and score each
    pair at once; with `masks` = (threshold, folder), also write the canonical prompts' masks as it goes. On the
    batch pipeline (`clipseg_drywall.pipeline`, `LogitsHead`): the scoring and mask writing of a batch run in
    a write thread beside the model's next batch.

    Under `accelerate launch` each process takes its batches of the rows (`score_split`), and the shares are
    gathered and put back in row order, so the statistics are those of one process."""
    canonical = [canonical_prompt(t) for t in TASKS]
    extra = [p for t in TASKS for p in robustness_prompts(t) if p not in canonical] if robustness else []
    prompts = canonical + extra
    out = ScoredSplit()
    parts: list[ImageStatistics] = []
    per_prompt: dict[str, list[ImageStatistics]] = {p: [] for p in prompts if robustness}
    scored_prompts = {t: [(i, p) for i, p in enumerate(prompts) if robustness and p in robustness_prompts(t)]
                      for t in TASKS}
    names = unique_names(split["image_id"])  # over the whole split: a share names its images as one process does
    rows = list(range(len(split))) if rows is None else list(rows)
    columns = split.select_columns(["image", "mask", "task"]).select(rows)
    # fixed batches of `rows` (this process's, dealt by `score_split`): the batch pipeline decodes, runs the
    # model and hands each image's logits to `score` in a write thread, in row order; datasets decodes the
    # images as it reads the rows, so the pipeline's decode stage stays in this process
    batches = ([Work(names[row], image, data=(row, mask, task)) for row, image, mask, task in
                zip(rows[start:], batch["image"], batch["mask"], batch["task"])]
               for start, batch in zip(range(0, len(rows), batch_size), columns.iter(batch_size=batch_size)))

    def score(done: Done) -> tuple[str, str, ImageStatistics, dict[str, ImageStatistics]]:
        row, mask, task = done.work.data
        if done.error is not None:
            raise ImageLoadError(f"{names[row]}: {done.error}")
        width, height = done.size
        target = torch.from_numpy(np.asarray(mask.convert("L")) > 127)
        probabilities = native_probabilities(done.logits, (height, width))
        own, other = TASKS.index(task), TASKS.index(other_task(task))
        statistics = image_statistics([probabilities[own], probabilities[other]],
                                      [target, torch.zeros_like(target)], [own, own], [False, True], thresholds)
        robust = {prompt: image_statistics([probabilities[index]], [target], [own], [False], thresholds)
                  for index, prompt in scored_prompts[task]}
        if masks is not None:
            write_masks(probabilities[: len(TASKS)], names[row], *masks)
        return task, names[row], statistics, robust

    options = PipelineOptions(num_workers=0).resolved(str(getattr(segmenter, "device", "cpu")),
                                                      distributed.cpu_threads_per_process(), segmenter.backend)
    with tqdm(total=len(rows), desc=desc, unit="image") as progress:
        for batch in pipeline.run(segmenter, batches, prompts, score, options=options, head=LogitsHead):
            for _, (task, name, statistics, robust) in batch.results:
                parts.append(statistics)
                for prompt, part in robust.items():
                    per_prompt[prompt].append(part)
                out.tasks.append(task)
                out.names.append(name)
            progress.update(batch.size)
    out.statistics = ImageStatistics.concatenate(parts, thresholds)
    out.per_prompt = {p: ImageStatistics.concatenate(v, thresholds) for p, v in per_prompt.items() if v}
    return out


def write_masks(probabilities: torch.Tensor, name: str, threshold: float, masks_dir: Path) -> None:
    """One {0,255} PNG per canonical prompt of one image, from its native-size probabilities."""
    masks_dir.mkdir(parents=True, exist_ok=True)
    for task, mask in zip(TASKS, threshold_masks(probabilities, threshold).numpy()):
        save_mask(mask, masks_dir / mask_file_name(name, canonical_prompt(task)))


def score_split(segmenter: BatchedSegmenter, split, batch_size: int, thresholds: Sequence[float], robustness: bool,
                desc: str, masks: tuple[float, Path] | None = None) -> ScoredSplit:
    """`segment_and_score` over this process's batches of the split (the batch pipeline's one dealing rule,
    `pipeline.deal`: batch k of the rows to process k % size), gathered and put back in row order: every
    process gets the whole, as one process scores it."""
    rank, size = distributed.world()
    if size == 1:
        return segment_and_score(segmenter, split, batch_size, thresholds, robustness, desc, masks)
    share = batches_of(len(split), batch_size, rank, size)
    scored = segment_and_score(segmenter, split, batch_size, thresholds, robustness, f"{desc} ({rank + 1}/{size})",
                               masks, rows=share)
    gathered = ScoredSplit.concatenate(distributed.gather_objects(scored), thresholds)
    return in_row_order(gathered, [row for part in distributed.gather_objects(share) for row in part])


def in_row_order(scored: ScoredSplit, rows: Sequence[int]) -> ScoredSplit:
    """`scored`, whose images are the split's `rows` in that order, with its images in row order."""
    order = np.argsort(np.asarray(rows), kind="stable")
    pairs = np.stack([2 * order, 2 * order + 1], axis=1).reshape(-1)  # own prompt, then the other task's
    per_prompt = {}
    for prompt, statistics in scored.per_prompt.items():
        task = TASKS[int(statistics.task_id[0])]
        mine = [rows[i] for i, image_task in enumerate(scored.tasks) if image_task == task]
        per_prompt[prompt] = statistics.select(np.argsort(np.asarray(mine), kind="stable"))
    return ScoredSplit(tasks=[scored.tasks[i] for i in order], names=[scored.names[i] for i in order],
                       statistics=scored.statistics.select(pairs), per_prompt=per_prompt)


def per_image_records(scored: ScoredSplit, threshold: float) -> list[dict]:
    """Per image under its own task's canonical prompt: IoU, Dice, predicted and true foreground fractions."""
    scores = per_image_scores(scored.statistics, threshold)
    return [
        {"image_id": name, "task": task, "prompt": canonical_prompt(task),
         **{key: float(values[i]) for key, values in scores.items()}, "index": i}
        for i, (name, task) in enumerate(zip(scored.names, scored.tasks))
    ]


def write_per_image_csv(records: list[dict], path: Path) -> None:
    columns = ["image_id", "task", "prompt", "iou", "dice", "predicted_fraction", "true_fraction"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def prompt_table(per_prompt: dict[str, ImageStatistics], threshold: float) -> list[dict]:
    """mIoU of each prompt on its task's images; `in_vocabulary` False for the paraphrases."""
    rows = []
    for prompt, statistics in per_prompt.items():
        scores = statistics.scores(threshold)
        task = TASKS[int(statistics.task_id[0])]
        rows.append({"task": task, "prompt": prompt, "in_vocabulary": task_of_prompt(prompt) == task,
                     "miou": scores["miou"], "n_images": scores["n_images"]})
    return sorted(rows, key=lambda row: TASKS.index(row["task"]))  # stable: canonical, synonyms, paraphrases


def figure_cases(records: list[dict], split, masks_dir: Path, per_task: int) -> list[Case]:
    """The `per_task` best (highest IoU, largest target first) and worst cases of each task."""
    cases = []
    for task in TASKS:
        ranked = sorted((r for r in records if r["task"] == task), key=lambda r: (r["iou"], r["true_fraction"]))
        picked = [("best", r) for r in ranked[::-1][:per_task]] + [("worst", r) for r in ranked[:per_task]]
        for kind, record in picked[: 2 * min(per_task, len(ranked))]:
            row = split[record["index"]]
            with Image.open(masks_dir / mask_file_name(record["image_id"], canonical_prompt(task))) as written:
                prediction = np.asarray(written)
            cases.append(Case(f"{task} {kind}: IoU {record['iou']:.3f}\n{record['image_id'][:40]}",
                              load_image(row["image"]), np.asarray(row["mask"].convert("L")), prediction))
    return cases


def dataset_leakage(args: EvaluationArguments, split: str) -> dict:
    """Layout and, per task, how many images of `split` share a source photo with train, from the
    build's stats.json (None where the dataset carries no such record)."""
    stats = read_build_stats(args.dataset_path)
    if stats is None:
        return {"layout": args.dataset_config, "leaked_images": None}
    return {"layout": stats.get(LAYOUT_KEY, OFFICIAL_LAYOUT), "leaked_images": leaked_images(stats, split)}


def choose_threshold(args: EvaluationArguments, segmenter: BatchedSegmenter, dataset, split: str) -> tuple[float, dict]:
    """(threshold, calibration block): fixed, the model's, or swept on the calibration split."""
    if args.threshold is not None:
        return args.threshold, {"source": "argument", "split": None, "tuned_on_scored_split": False}
    if args.calibration_split.lower() == "none":
        return segmenter.threshold, {"source": "model config", "split": None, "tuned_on_scored_split": False}
    same = args.calibration_split == split
    if same and not args.allow_calibration_on_scored_split:
        raise ValueError(f"refusing to score split {split!r} with a threshold tuned on that same split: pass another "
                         "--calibration_split (or 'none'), or --allow_calibration_on_scored_split to accept an "
                         "optimistic score, which metrics.json and the card will then label")
    rows = select_split(dataset, args.calibration_split, args.dataset_source, args.max_samples)
    scored = score_split(segmenter, rows, args.batch_size, SWEEP, robustness=False,
                         desc=f"calibrating on {args.calibration_split}")
    table = sweep(scored.statistics)
    threshold = best_threshold(table, segmenter.threshold)
    return threshold, {"source": f"sweep on {args.calibration_split}", "split": args.calibration_split,
                       "tuned_on_scored_split": same, "sweep": {str(t): row for t, row in table.items()}}


def check_arguments(args: EvaluationArguments) -> None:
    """What needs no model or data, checked before either loads: the model source and the output folder."""
    check_model_source(args.model_path, "--model_path")
    check_writable_folder(args.output_dir, "--output_dir")
    if args.update_model and args.backend != "torch":
        raise ValueError("--update_model writes into a transformers checkpoint; with --backend onnx --model_path is an "
                         "export folder: evaluate the checkpoint with the torch backend to update it")
    if args.update_model and not Path(args.model_path).is_dir():
        raise ValueError(f"--update_model writes into a local model folder; {args.model_path} is a Hub id: "
                         "download it (or drop --update_model)")
    if args.update_model:
        check_writable_folder(args.model_path, "--model_path (with --update_model)")


def scored_split(args: EvaluationArguments):
    """(the dataset, the name of the split to score, its rows): test where the dataset has one, else validation."""
    dataset = load_dataset_dict(args)
    name = args.split or ("test" if "test" in dataset else "validation")
    split = select_split(dataset, name, args.dataset_source, args.max_samples)
    if len(split) == 0:
        raise ValueError(f"split {name!r} of {args.dataset_source} is empty")
    return dataset, name, split


def metrics_record(args: EvaluationArguments, split_name: str, split, scored: ScoredSplit, threshold: float,
                   calibration: dict) -> dict:
    """metrics.json's content: per-task scores with intervals, prompt fidelity and robustness, the threshold's origin."""
    tasks, fidelity = task_summary(scored.statistics, threshold, args.bootstrap_resamples)
    return {
        "model": str(args.model_path),
        "dataset": {"path": args.dataset_path, "name": args.dataset_name, "config": args.dataset_config,
                    "split": split_name, "n_rows": len(split), **dataset_leakage(args, split_name)},
        "tasks": tasks,
        "mean_iou": float(np.mean([t["miou"] for t in tasks.values()])),
        "threshold": threshold,
        "threshold_source": calibration["source"],
        "threshold_tuned_on_scored_split": calibration["tuned_on_scored_split"],
        "calibration": calibration,
        "bootstrap": {"resamples": args.bootstrap_resamples, "confidence": 0.95, "seed": 0, "over": "images"},
        "prompt_fidelity": fidelity,
        "prompts": prompt_table(scored.per_prompt, threshold) if scored.per_prompt else None,
        "per_image": PER_IMAGE_FILE,
    }


def write_outputs(args: EvaluationArguments, segmenter: BatchedSegmenter, split, scored: ScoredSplit,
                  metrics: dict) -> None:
    """per_image.csv, the best/worst figure and metrics.json (with the footprint) in --output_dir."""
    output_dir = Path(args.output_dir)
    records = per_image_records(scored, metrics["threshold"])
    write_per_image_csv(records, output_dir / PER_IMAGE_FILE)
    if args.latency_images > 0 and args.backend == "torch":  # the footprint counts torch parameters and memory
        images = [load_image(image) for image in split.select(range(min(args.latency_images, len(split))))["image"]]
        prompts = [canonical_prompt(t) for t in TASKS]
        metrics["footprint"] = footprint(segmenter, model_files_dir(args.model_path), images, prompts, args.batch_size)
    cases = figure_cases(records, split, output_dir / "masks", args.figure_cases)
    if cases:
        case_grid(cases, output_dir / FIGURE_FILE)
        metrics["figure"] = FIGURE_FILE
    with atomic_path(output_dir / METRICS_FILE) as temporary:
        temporary.write_text(json.dumps(metrics, indent=2))


def evaluate_model(args: EvaluationArguments) -> dict:
    """Check, load, calibrate, score (each process its share, masks written as it goes), then on the main
    process write the outputs and, with --update_model, the model folder's evaluation files."""
    check_arguments(args)
    dataset, split_name, split = scored_split(args)
    segmenter = load_segmenter(args.model_path, args.backend, batch_size=args.batch_size,
                               device=args.device or distributed.launched_device(), speed_options=args.speed_options,
                               num_threads=distributed.cpu_threads_per_process())
    threshold, calibration = choose_threshold(args, segmenter, dataset, split_name)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scored = score_split(segmenter, split, args.batch_size, thresholds_with(threshold), args.prompt_robustness,
                         desc=f"scoring {split_name}", masks=(threshold, output_dir / "masks"))
    metrics = metrics_record(args, split_name, split, scored, threshold, calibration)
    if not distributed.is_main_process():
        return metrics  # the main process writes what the gathered statistics give
    write_outputs(args, segmenter, split, scored, metrics)
    if args.update_model:
        calibrated = threshold if calibration["source"].startswith("sweep") else None
        store_evaluation(Path(args.model_path), metrics, output_dir / FIGURE_FILE, calibrated)
    return metrics


def _interval(m: dict, key: str) -> str:
    low, high = m["ci95"][key]
    return f"{m[key]:.4f} [{low:.3f}, {high:.3f}]"


def format_metrics(metrics: dict) -> str:
    tuned = " (TUNED ON THE SCORED SPLIT: optimistic)" if metrics["threshold_tuned_on_scored_split"] else ""
    dataset = metrics["dataset"]
    lines = [f"{dataset['split']} split ({dataset['n_rows']} images, layout {dataset.get('layout')}, images sharing a "
             f"photo with train: {dataset.get('leaked_images')}); threshold {metrics['threshold']} "
             f"({metrics['threshold_source']}){tuned}"]
    for task, m in metrics["tasks"].items():
        lines.append(f"{task:7s} mIoU {_interval(m, 'miou')}  Dice {_interval(m, 'dice')}  dataset IoU "
                     f"{_interval(m, 'dataset_iou')}  ({m['n_images']} images, prompt {m['prompt']!r})")
    for task, f in metrics["prompt_fidelity"].items():
        lines.append(f"{task:7s} foreground under {f['other_prompt']!r}: {f['foreground_fraction_other_prompt']:.4f} "
                     f"(under its own prompt: {f['foreground_fraction_own_prompt']:.4f})")
    for row in metrics.get("prompts") or []:
        marker = "" if row["in_vocabulary"] else "  (paraphrase)"
        lines.append(f"{row['task']:7s} {row['prompt']!r:32s} mIoU {row['miou']:.4f}{marker}")
    if "footprint" in metrics:
        fp = metrics["footprint"]
        lines.append(f"{fp['params_total']:,} params, {fp['size_on_disk_mb']} MB, {fp['inference_ms_per_image']} ms/image "
                     f"(batch 1), {fp['inference_ms_per_image_batched']} ms/image (batch {fp['batch_size']}) on {fp['device']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with user_errors(argv):
        (args,) = parse_arguments((EvaluationArguments,), argv)
        metrics = evaluate_model(args)
    if not distributed.is_main_process():
        return 0
    print(format_metrics(metrics))
    print(f"wrote {Path(args.output_dir) / METRICS_FILE} and {Path(args.output_dir) / PER_IMAGE_FILE}")
    return 0
