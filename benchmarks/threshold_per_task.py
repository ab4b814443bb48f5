"""Would one threshold per task help a trained model? Scores validation and test once at every sweep threshold.

Prints, per threshold, test mIoU per task and the foreground each task's photos get under the other
task's prompt, then each task's best validation threshold and what it gives on test. Everything comes
from `run_evaluation.segment_and_score` (the package's one scoring path), with the canonical prompts.

    python benchmarks/threshold_per_task.py --model runs/learn-from-scratch/seed0 --dataset_path data/drywall-qa
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipseg_drywall.arguments import DatasetArguments  # noqa: E402
from clipseg_drywall.cli import user_errors  # noqa: E402
from clipseg_drywall.data import load_dataset_dict  # noqa: E402
from clipseg_drywall.prompts import TASKS  # noqa: E402
from clipseg_drywall.run_evaluation import segment_and_score  # noqa: E402
from clipseg_drywall.scoring import SWEEP, sweep, task_scores  # noqa: E402
from clipseg_drywall.segmenters.pytorch import Segmenter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset_path", required=True, help="a source-disjoint build (validation and test splits)")
    args = parser.parse_args(argv)
    with user_errors(argv):
        dataset = load_dataset_dict(DatasetArguments(dataset_path=args.dataset_path))
        segmenter = Segmenter.from_pretrained(args.model)
    thresholds = tuple(SWEEP)
    validation, test = (segment_and_score(segmenter, dataset[split], 8, thresholds, False, split).statistics
                        for split in ("validation", "test"))
    print(f"{'threshold':>9} " + " ".join(f"{t + ' mIoU':>12} {t + ' wrongFG':>14}" for t in TASKS))
    for threshold in thresholds:
        scores = task_scores(test, threshold)
        print(f"{threshold:>9.2f} " + " ".join(
            f"{scores[f'iou_{t}']:>12.3f} {scores[f'wrong_prompt_foreground_{t}']:>14.3f}" for t in TASKS))
    table = sweep(validation)
    for task in TASKS:
        best = max(table, key=lambda threshold: table[threshold][task])
        print(f"{task}: best validation threshold {best:.2f} -> test mIoU {task_scores(test, best)[f'iou_{task}']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
