"""Does the training loop learn from random weights on 2 CPU cores? A wall-clock-budgeted run.

Trains `configs/clipseg-small` (random init, both encoders trained) on the drywall data for
`--minutes`, then prints per-task validation IoU / Dice at native resolution (threshold 0.5 and
the threshold calibrated on training images), prompt fidelity (foreground predicted under the other
task's prompt) and the image-independent baselines (all-zero, all-one, and the train-set mean mask
thresholded on train). Scores come from `clipseg_drywall.evaluation`, the package's scoring path.

    python benchmarks/learn_from_scratch.py --minutes 40            # builds ../shared/data if needed
    python benchmarks/learn_from_scratch.py --dataset_path data/drywall-qa --minutes 20

The defaults are the recipe that beat the mean-mask prior on both tasks in 60 minutes (README,
"Performance"); the 40-minute default budget stops it earlier in its cosine schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import datasets
import numpy as np
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED, StepClock, shared_dataset_path  # noqa: E402
from clipseg_drywall.arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments  # noqa: E402
from clipseg_drywall.collator import CLIPSegCollator, mask_array  # noqa: E402
from clipseg_drywall.evaluation import SWEEP, evaluate_rows, task_scores  # noqa: E402
from clipseg_drywall.metrics import mask_counts, scores_from_counts  # noqa: E402
from clipseg_drywall.prompts import TASKS  # noqa: E402
from clipseg_drywall.run_training import build_trainer, write_run_card  # noqa: E402


class WallClock(TrainerCallback):
    """Stops training once `seconds` have passed (the schedule is sized from a throughput probe)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = float("inf")

    def on_train_begin(self, args, state, control, **kwargs):
        self.deadline = time.time() + self.seconds

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() > self.deadline:
            control.should_training_stop = True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--dataset_path", help="a save_to_disk DatasetDict; default: built from ../shared/data")
    p.add_argument("--config", default=str(REPO / "configs" / "clipseg-small"))
    p.add_argument("--tokenizer", default=str(SHARED / "clipseg-rd64-refined"))
    p.add_argument("--output_dir", default=str(REPO / "runs" / "learn-from-scratch"))
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--decoder_learning_rate", type=float, default=1e-3)
    p.add_argument("--encoder_learning_rate", type=float, default=3e-4)
    p.add_argument("--dice_weight", type=float, default=1.0)
    p.add_argument("--pos_weight", type=float, default=3.0)
    p.add_argument("--negative_prompt_ratio", type=float, default=0.25)
    p.add_argument("--calibration_rows", type=int, default=200, help="train rows the threshold is tuned on")
    p.add_argument("--max_eval_samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def _dataset_path(args) -> str:
    return args.dataset_path or shared_dataset_path(Path(args.output_dir).parent / "dataset")


def _training_arguments(args, max_steps: int, output_dir: str) -> CLIPSegTrainingArguments:
    return CLIPSegTrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=args.batch_size,
        decoder_learning_rate=args.decoder_learning_rate, encoder_learning_rate=args.encoder_learning_rate,
        dice_weight=args.dice_weight, pos_weight=args.pos_weight, balance_tasks=True,
        lr_scheduler_type="cosine", warmup_steps=min(100, max_steps // 10), logging_steps=50,
        eval_strategy="no", save_strategy="no", report_to=[], dataloader_pin_memory=False, seed=args.seed,
    )


def train(args, dataset_path: str):
    model_args = ModelArguments(config_name=args.config, tokenizer_name=args.tokenizer, image_size=args.image_size)
    data_args = DataArguments(dataset_path=dataset_path, resample_prompts=True, augment=True,
                              negative_prompt_ratio=args.negative_prompt_ratio)
    clock = StepClock()
    probe = build_trainer(model_args, data_args, _training_arguments(args, 24, str(Path(args.output_dir) / "probe")),
                          callbacks=[clock])
    probe.train()
    seconds_per_step = (clock.times[-1] - clock.times[7]) / 16  # the first steps warm up: not timed
    budget = args.minutes * 60
    max_steps = max(10, int(budget / seconds_per_step))
    print(f"probe: {seconds_per_step:.2f} s/step -> {max_steps} steps in {args.minutes} min", flush=True)
    trainer = build_trainer(model_args, data_args, _training_arguments(args, max_steps, args.output_dir),
                            callbacks=[WallClock(budget)])
    start = time.time()
    trainer.train()
    trainer.save_model()
    write_run_card(trainer, model_args, data_args)  # training_args.json: the card says "from random weights"
    return trainer, time.time() - start


def score(model, processor, rows, negatives: bool = False, batch_size: int = 8) -> dict[float, dict[str, float]]:
    """Per-task scores at every threshold of the sweep, from one model pass (`evaluation.evaluate_rows`)."""
    collate = CLIPSegCollator(processor, train=False, eval_negatives=negatives)
    statistics = evaluate_rows(model, collate, rows, SWEEP, batch_size)
    return {t: task_scores(statistics, t) for t in SWEEP}


def _miou(predictions: list[np.ndarray], masks: list[np.ndarray]) -> float:
    counts = np.array([mask_counts(p, m) for p, m in zip(predictions, masks)]).reshape(-1, 3)
    return scores_from_counts(*counts.T)["miou"]


def baselines(train_rows, validation_rows) -> dict[str, dict[str, float]]:
    """All-zero, all-one, and train-mean-mask (threshold tuned on train) IoU per task on validation."""
    out: dict[str, dict[str, float]] = {}
    for task in TASKS:
        train_masks = [mask_array(r["mask"]) for r in train_rows if r["task"] == task]
        valid_masks = [mask_array(r["mask"]) for r in validation_rows if r["task"] == task]
        if not train_masks or not valid_masks:
            continue
        mean = np.mean([m for m in train_masks if m.shape == train_masks[0].shape], axis=0)

        def prior(masks: list[np.ndarray], threshold: float, mean: np.ndarray = mean) -> list[np.ndarray]:
            return [(mean > threshold) if m.shape == mean.shape else np.zeros_like(m, bool) for m in masks]

        tuned = max(np.linspace(0.02, 0.6, 30), key=lambda t: _miou(prior(train_masks, t), train_masks))
        out[task] = {
            "all_zero": _miou([np.zeros_like(m) for m in valid_masks], valid_masks),
            "all_one": _miou([np.ones_like(m) for m in valid_masks], valid_masks),
            "mean_mask": _miou(prior(valid_masks, tuned), valid_masks),
            "mean_mask_threshold": float(tuned),
        }
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    dataset_path = _dataset_path(args)
    dataset = datasets.load_from_disk(dataset_path)
    trainer, seconds = train(args, dataset_path)
    model, processor = trainer.model, trainer.processing_class
    validation = dataset["validation"]
    if args.max_eval_samples:
        validation = validation.shuffle(seed=0).select(range(min(args.max_eval_samples, len(validation))))
    validation_rows = list(validation)
    train_sample = dataset["train"].shuffle(seed=1).select(range(min(args.calibration_rows, len(dataset["train"]))))
    calibration = score(model, processor, list(train_sample))
    threshold = max(SWEEP, key=lambda t: calibration[t].get("mean_iou", 0.0))
    positive = score(model, processor, validation_rows)
    negative = score(model, processor, validation_rows, negatives=True)
    reference = baselines(list(dataset["train"]), validation_rows)
    report = {
        "minutes": args.minutes, "train_seconds": seconds, "steps": trainer.state.global_step,
        "images_per_second": trainer.state.global_step * args.batch_size / seconds,
        "threshold_calibrated_on_train": threshold,
        "validation_at_0.5": positive[0.5], "validation_at_calibrated": positive[threshold],
        "wrong_prompt_foreground_at_calibrated": negative[threshold],
        "baselines": reference, "args": vars(args),
    }
    Path(args.output_dir, "learn_from_scratch.json").write_text(json.dumps(report, indent=2))
    print(f"\n{trainer.state.global_step} steps in {seconds / 60:.1f} min "
          f"({report['images_per_second']:.1f} img/s); threshold calibrated on train: {threshold}")
    print(f"{'task':8} {'IoU@0.5':>8} {'IoU@cal':>8} {'Dice@cal':>8} {'wrongFG':>8} "
          f"{'all-0':>7} {'all-1':>7} {'meanmask':>8}")
    for task in TASKS:
        b = reference.get(task, {})
        print(f"{task:8} {positive[0.5].get(f'iou_{task}', float('nan')):8.3f} "
              f"{positive[threshold].get(f'iou_{task}', float('nan')):8.3f} "
              f"{positive[threshold].get(f'dice_{task}', float('nan')):8.3f} "
              f"{negative[threshold].get(f'wrong_prompt_foreground_{task}', float('nan')):8.4f} "
              f"{b.get('all_zero', float('nan')):7.3f} {b.get('all_one', float('nan')):7.3f} "
              f"{b.get('mean_mask', float('nan')):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
