"""Batches for CLIPSeg: processor pixels, padded prompt tokens, masks kept at native size.

Rows are those of the dataset (`image`, `mask`, `prompt`, `task`, ...). Training rows may carry
a `draw` (see `sampling.py`) that seeds their random choices; evaluation rows are scored under
the canonical prompt of their task (or, with `eval_negatives`, of the other task against an
empty mask: prompt fidelity), without augmentation.

Batch keys: `pixel_values`, `input_ids`, `attention_mask` (model inputs); `labels` (B, H, W)
float {0, 1} padded with -100 to the largest mask; `task_ids` (index in `TASKS` of the row's
task); `negative` (True where the prompt names the other task and the label is empty).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .losses import IGNORE_INDEX
from .prompts import TASKS, canonical_prompt, other_task, sample_prompt


def mask_array(mask: Image.Image) -> np.ndarray:
    """{0, 1} float32 array of a mode-L {0, 255} mask (anything above 127 is foreground)."""
    return (np.asarray(mask.convert("L")) > 127).astype(np.float32)


def pad_masks(masks: list[np.ndarray]) -> torch.Tensor:
    """Stack masks of possibly different sizes, padding bottom/right with `IGNORE_INDEX`."""
    height = max(m.shape[0] for m in masks)
    width = max(m.shape[1] for m in masks)
    labels = torch.full((len(masks), height, width), IGNORE_INDEX, dtype=torch.float32)
    for i, m in enumerate(masks):
        labels[i, : m.shape[0], : m.shape[1]] = torch.from_numpy(m)
    return labels


@dataclass
class CLIPSegCollator:
    """Turns dataset rows into a CLIPSeg batch; `train=False` gives the deterministic eval batch."""

    processor: Any  # CLIPSegProcessor
    train: bool = True
    resample_prompts: bool = False
    augment: bool = False
    negative_prompt_ratio: float = 0.0
    eval_negatives: bool = False  # eval only: every row under the other task's prompt, empty target

    def __post_init__(self):
        if not 0.0 <= self.negative_prompt_ratio < 1.0:
            raise ValueError(f"negative_prompt_ratio must be in [0, 1), got {self.negative_prompt_ratio}")

    def _rng(self, row: dict) -> random.Random:
        draw = row.get("draw")
        if draw is None:  # a row not from `DrawSampler`: fall back on torch's (checkpointed) generator
            draw = int(torch.randint(2**62, ()))
        return random.Random(draw)

    def example(self, row: dict) -> tuple[Image.Image, str, np.ndarray, bool]:
        """(image, prompt, {0,1} mask, is_negative) of one row after this collator's random choices."""
        image, mask, task = row["image"].convert("RGB"), row["mask"], row["task"]
        if image.size != mask.size:
            raise ValueError(f"image {image.size} and mask {mask.size} of {row.get('image_id')} differ; rebuild the dataset")
        if not self.train:
            if self.eval_negatives:
                target = mask_array(mask)
                return image, canonical_prompt(other_task(task)), np.zeros_like(target), True
            return image, canonical_prompt(task), mask_array(mask), False
        rng = self._rng(row)
        prompt = sample_prompt(task, rng) if self.resample_prompts else row["prompt"]
        if self.augment:
            if rng.random() < 0.5:
                image, mask = (m.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for m in (image, mask))
            if rng.random() < 0.5:
                image, mask = (m.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for m in (image, mask))
        target = mask_array(mask)
        if self.negative_prompt_ratio and rng.random() < self.negative_prompt_ratio:
            # any synonym, never always the canonical one: a prompt seen only in negative pairs
            # would be learnt as "predict nothing" and then fail at evaluation, which uses it
            prompt = sample_prompt(other_task(task), rng)
            return image, prompt, np.zeros_like(target), True
        return image, prompt, target, False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images, prompts, masks, negatives = zip(*(self.example(row) for row in rows))
        batch = self.processor(images=list(images), text=list(prompts), padding=True, return_tensors="pt")
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": pad_masks(list(masks)),
            "task_ids": torch.tensor([TASKS.index(row["task"]) for row in rows]),
            "negative": torch.tensor(negatives, dtype=torch.bool),
        }
