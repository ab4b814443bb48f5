"""The loop learns and reads the prompt: 16 real training images (8 per task), `configs/clipseg-small`
from random weights, a few CPU minutes. Scored on the same images at native resolution."""

from __future__ import annotations

import pytest

from clipseg_drywall.arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments
from clipseg_drywall.scoring import evaluate_rows, task_scores
from clipseg_drywall.training.collator import CLIPSegCollator
from clipseg_drywall.training.run_training import build_trainer

from .helpers import CLIPSEG_FILES, REPO, requires_shared

pytestmark = [requires_shared, pytest.mark.slow]

# what learns in ~2-3 CPU minutes. The rates matter most: at encoder 2e-3 / decoder 3e-3 the taping
# IoU stayed at 0.07 and the prompt was ignored (wrong-prompt foreground = predicted foreground)
RECIPE = {
    "max_steps": 400,
    "per_device_train_batch_size": 8,
    "decoder_learning_rate": 1e-3,
    "encoder_learning_rate": 3e-4,
    "dice_weight": 1.0,
    "pos_weight": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 20,
}


def test_small_config_learns_both_tasks_and_reads_the_prompt(learning_drywall_dir, tmp_path):
    trainer = build_trainer(
        ModelArguments(config_name=str(REPO / "configs" / "clipseg-small"), tokenizer_name=str(CLIPSEG_FILES),
                       image_size=224),
        DataArguments(dataset_path=str(learning_drywall_dir), negative_prompt_ratio=0.5, resample_prompts=True),
        CLIPSegTrainingArguments(output_dir=str(tmp_path), report_to=[], disable_tqdm=True, logging_steps=50,
                                 eval_strategy="no", save_strategy="no", dataloader_pin_memory=False, **RECIPE),
    )
    trainer.train()
    rows = list(trainer.train_dataset.rows)
    processor = trainer.processing_class
    positive = task_scores(evaluate_rows(trainer.model, CLIPSegCollator(processor, train=False), rows), 0.5)
    negative = task_scores(
        evaluate_rows(trainer.model, CLIPSegCollator(processor, train=False, eval_negatives=True), rows), 0.5
    )
    print(positive, negative)
    assert positive["iou_taping"] >= 0.5, positive
    assert positive["iou_crack"] >= 0.3, positive
    assert negative["wrong_prompt_foreground_crack"] < 0.05, negative
    assert negative["wrong_prompt_foreground_taping"] < 0.05, negative
