"""Does the training loop learn from random weights on 2 CPU cores? The small recipe over several seeds.

Trains the recipe (`configs/small-from-scratch.json`: `configs/clipseg-small`, random init, both
encoders trained, a fixed number of steps) once per seed, then scores each model with the package's
evaluation protocol (`run_evaluation.evaluate_model`): threshold calibrated on validation, scores on
the source-disjoint test split with 95% bootstrap intervals, foreground under the other task's
prompt. Beside them: the image-independent baselines (all-zero, all-one, and the train-set mean
mask with its threshold tuned on train), scored on the same test images. It ends with the mean and
the spread (min-max) over seeds.

    python -m data_builders build --cracks ../shared/data/cracks --joints ../shared/data/drywall-join-detect \\
        --split-by-source --output data/drywall-qa
    python benchmarks/learn_from_scratch.py --dataset_path data/drywall-qa --seeds 0 1

`--max_minutes` only guards the wall clock: a run that hits it is reported as stopped early, since its
cosine schedule did not finish. A seed whose model folder already holds a finished run of the same
recipe and seed is scored without training again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402
from clipseg_drywall.arguments import (  # noqa: E402
    CLIPSegTrainingArguments,
    DataArguments,
    DatasetArguments,  # noqa: E402
    EvaluationArguments,
    ModelArguments,
    parse_arguments,
)
from clipseg_drywall.cli import user_errors  # noqa: E402
from clipseg_drywall.data import load_dataset_dict  # noqa: E402
from clipseg_drywall.metrics import mask_counts, scores_from_counts  # noqa: E402
from clipseg_drywall.prompts import TASKS  # noqa: E402
from clipseg_drywall.run_evaluation import evaluate_model  # noqa: E402
from clipseg_drywall.training.collator import mask_array  # noqa: E402
from clipseg_drywall.training.run_training import main as train_main  # noqa: E402


class WallClockGuard(TrainerCallback):
    """Stops training once `seconds` have passed; the step count of the recipe decides otherwise."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = float("inf")

    def on_train_begin(self, args, state, control, **kwargs):
        self.deadline = time.time() + self.seconds

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() > self.deadline and state.global_step < state.max_steps:
            control.should_training_stop = True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", required=True, help="a source-disjoint build (data_builders --split-by-source)")
    p.add_argument("--recipe", default=str(REPO / "configs" / "small-from-scratch.json"))
    p.add_argument("--tokenizer", default=str(SHARED / "clipseg-rd64-refined"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--output_dir", default=str(REPO / "runs" / "learn-from-scratch"))
    p.add_argument("--max_minutes", type=float, default=90.0, help="wall-clock guard per training run")
    p.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="flags passed to train.py after the recipe")
    return p


def _parse(recipe: Path, seed: int, model_dir: Path, dataset_path: str, tokenizer: str, override: list[str]):
    argv = [str(recipe), "--seed", str(seed), "--output_dir", str(model_dir), "--dataset_path", dataset_path,
            "--tokenizer_name", tokenizer, *override]
    return argv, parse_arguments((ModelArguments, DataArguments, CLIPSegTrainingArguments), argv)[2]


COMMAND_FILE = "learn_from_scratch_command.json"


def _command(argv: list[str], recipe: Path) -> dict:
    """What decides a run: the train.py arguments (seed, overrides) and the recipe file's contents."""
    return {"argv": argv, "recipe": json.loads(recipe.read_text())}


def _finished(model_dir: Path, command: dict) -> bool:
    """A finished run of the same command in `model_dir`, so it is scored, not trained again."""
    saved = model_dir / COMMAND_FILE
    return (model_dir / "model.safetensors").is_file() and saved.is_file() and json.loads(saved.read_text()) == command


def _miou(predictions: list[np.ndarray], masks: list[np.ndarray]) -> float:
    counts = np.array([mask_counts(p, m) for p, m in zip(predictions, masks)]).reshape(-1, 3)
    return scores_from_counts(*counts.T)["miou"]


def baselines(train_rows, test_rows) -> dict[str, dict[str, float]]:
    """All-zero, all-one, and train-mean-mask (threshold tuned on train) IoU per task on the test rows."""
    out: dict[str, dict[str, float]] = {}
    for task in TASKS:
        train_masks = [mask_array(r["mask"]) for r in train_rows if r["task"] == task]
        test_masks = [mask_array(r["mask"]) for r in test_rows if r["task"] == task]
        if not train_masks or not test_masks:
            continue
        mean = np.mean([m for m in train_masks if m.shape == train_masks[0].shape], axis=0)

        def prior(masks: list[np.ndarray], threshold: float, mean: np.ndarray = mean) -> list[np.ndarray]:
            return [(mean > threshold) if m.shape == mean.shape else np.zeros_like(m, bool) for m in masks]

        tuned = max(np.linspace(0.02, 0.6, 30), key=lambda t: _miou(prior(train_masks, t), train_masks))
        out[task] = {
            "all_zero": _miou([np.zeros_like(m) for m in test_masks], test_masks),
            "all_one": _miou([np.ones_like(m) for m in test_masks], test_masks),
            "mean_mask": _miou(prior(test_masks, tuned), test_masks),
            "mean_mask_threshold": float(tuned),
        }
    return out


def run_seed(args, seed: int) -> dict:
    model_dir = Path(args.output_dir) / f"seed{seed}"
    argv, wanted = _parse(Path(args.recipe), seed, model_dir, args.dataset_path, args.tokenizer, args.override)
    command = _command(argv, Path(args.recipe))
    if _finished(model_dir, command):
        print(f"seed {seed}: reusing the finished run in {model_dir}", flush=True)
    else:
        train_main(argv, callbacks=[WallClockGuard(args.max_minutes * 60)])
        (model_dir / COMMAND_FILE).write_text(json.dumps(command, indent=2))
    metrics = evaluate_model(EvaluationArguments(
        model_path=str(model_dir), dataset_path=args.dataset_path, output_dir=str(model_dir / "test-evaluation"),
        split="test", calibration_split="validation", latency_images=0, update_model=False, figure_cases=0))
    state = json.loads((model_dir / "trainer_state.json").read_text())
    results = json.loads((model_dir / "train_results.json").read_text())
    return {"seed": seed, "steps": state["global_step"], "train_minutes": results["train_runtime"] / 60,
            "stopped_early": state["global_step"] < wanted.max_steps, "threshold": metrics["threshold"], "tasks": metrics["tasks"],
            "prompt_fidelity": metrics["prompt_fidelity"]}


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with user_errors():
        dataset = load_dataset_dict(DatasetArguments(dataset_path=args.dataset_path))
    stats = Path(args.dataset_path) / "stats.json"
    if not stats.is_file() or json.loads(stats.read_text()).get("layout") != "source-disjoint":
        raise SystemExit(f"error: {args.dataset_path} is not a source-disjoint build: make one with "
                         "`python -m data_builders build ... --split-by-source`")
    runs = [run_seed(args, seed) for seed in args.seeds]
    reference = baselines(list(dataset["train"]), list(dataset["test"]))
    report = {"recipe": json.loads(Path(args.recipe).read_text()), "override": args.override, "runs": runs,
              "baselines_on_test": reference}
    Path(args.output_dir, "learn_from_scratch.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'seed':>4} {'steps':>6} {'min':>6} {'thr':>5}  " + "  ".join(
        f"{task + ' mIoU [95% CI]':>24} {'wrongFG':>8}" for task in TASKS))
    for run in runs:
        cells = []
        for task in TASKS:
            m, f = run["tasks"][task], run["prompt_fidelity"][task]
            low, high = m["ci95"]["miou"]
            cells.append(f"{m['miou']:8.3f} [{low:.3f}, {high:.3f}] {f['foreground_fraction_other_prompt']:8.4f}")
        early = " (stopped early by --max_minutes)" if run["stopped_early"] else ""
        print(f"{run['seed']:>4} {run['steps']:>6} {run['train_minutes']:6.1f} {run['threshold']:5.2f}  "
              + "  ".join(cells) + early)
    for task in TASKS:
        b = reference.get(task, {})
        print(f"{task}: mIoU over seeds {_spread([r['tasks'][task]['miou'] for r in runs])}; foreground under the "
              f"other prompt {_spread([r['prompt_fidelity'][task]['foreground_fraction_other_prompt'] for r in runs])}; "
              f"baselines on test: all-zero {b.get('all_zero', float('nan')):.3f}, all-one "
              f"{b.get('all_one', float('nan')):.3f}, train mean mask {b.get('mean_mask', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
