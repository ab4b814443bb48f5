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

import io
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..losses import IGNORE_INDEX
from ..preprocessing import Preprocessing
from ..prompts import TASKS, canonical_prompt, other_task, sample_prompt, tokenize_prompts

PREPROCESSING = ("numpy", "processor")


def mask_array(mask: Image.Image) -> np.ndarray:
    """{0, 1} float32 array of a mode-L {0, 255} mask (anything above 127 is foreground)."""
    return (np.asarray(mask.convert("L")) > 127).astype(np.float32)


def pad_masks(masks: list[np.ndarray]) -> torch.Tensor:
    """Stack {0,1} masks (float or bool) of possibly different sizes as float32, padding bottom/right with
    `IGNORE_INDEX`."""
    height = max(m.shape[0] for m in masks)
    width = max(m.shape[1] for m in masks)
    if all(m.shape == (height, width) for m in masks):  # nothing to pad: one conversion, no fill
        return torch.from_numpy(np.stack(masks).astype(np.float32))  # numpy's bool cast: 8x torch's on a CPU
    labels = torch.full((len(masks), height, width), IGNORE_INDEX, dtype=torch.float32)
    for i, m in enumerate(masks):
        labels[i, : m.shape[0], : m.shape[1]] = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
    return labels


def resize_images(dataset, processor, desc: str = "resizing images", decode_fast: bool = True):
    """`dataset` with each `image` already at the processor's input size and stored as BMP, each mask re-stored
    as a fast PNG; masks keep their native size.

    The processor then resizes nothing (Pillow returns a copy at the same size), so the pixel values are
    bit-identical, while each step decodes a small image instead of a 640x640 JPEG. The formats are chosen
    for decoding, the larger part of a step's data cost: a 224-px BMP decodes in 0.05 ms against 1.1 ms as
    PNG, a mask as PNG at zlib level 1 in 0.4 ms against 0.9 ms at the default (both lossless; measured on
    one core, docs/benchmarks.md). `datasets` caches the mapped rows (about 150 kB a row at 224 px), so this
    costs once per dataset and processor size. `decode_fast=False` stores them as `datasets` does by default
    (PNG at zlib's default level): the reference the data benchmark compares against.
    """
    image_processor = processor.image_processor
    size = (image_processor.size["width"], image_processor.size["height"])
    resample = Image.Resampling(image_processor.resample)

    def encoded(image: Image.Image, image_format: str, **options) -> dict:
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, **options)
        return {"bytes": buffer.getvalue(), "path": None}

    def resize(batch: dict) -> dict:
        images = [image.convert("RGB").resize(size, resample) for image in batch["image"]]
        if not decode_fast:
            return {**batch, "image": images}
        batch["image"] = [encoded(image, "BMP") for image in images]
        batch["mask"] = [encoded(mask, "PNG", compress_level=1) for mask in batch["mask"]]
        return batch

    return dataset.map(resize, batched=True, batch_size=32, features=dataset.features,
                       desc=f"{desc} to {size[0]}x{size[1]}")


@dataclass
class CLIPSegCollator:
    """Turns dataset rows into a CLIPSeg batch; `train=False` gives the deterministic eval batch."""

    processor: Any  # CLIPSegProcessor
    train: bool = True
    resample_prompts: bool = False
    augment: bool = False
    negative_prompt_ratio: float = 0.0
    eval_negatives: bool = False  # eval only: every row under the other task's prompt, empty target
    # "numpy": the processor's steps on a batch of arrays (`preprocessing`: bit-identical pixels, a fraction of
    # the cost); "processor": the image processor itself, one PIL image at a time (the reference)
    preprocess: str = "numpy"

    def __post_init__(self):
        if not 0.0 <= self.negative_prompt_ratio < 1.0:
            raise ValueError(f"negative_prompt_ratio must be in [0, 1), got {self.negative_prompt_ratio}")
        if self.preprocess not in PREPROCESSING:
            raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {self.preprocess!r}")

    def _rng(self, row: dict) -> random.Random:
        draw = row.get("draw")
        if draw is None:  # a row not from `DrawSampler`: fall back on torch's (checkpointed) generator
            draw = int(torch.randint(2**62, ()))
        return random.Random(draw)

    def choices(self, row: dict) -> tuple[str, bool, bool, bool]:
        """(prompt, flip left-right, flip top-bottom, is_negative) of one train row.

        Every random choice of an example is made here, in a fixed order, so the pixel path and
        the cached-feature path (`CachedFeatureCollator`) see the same examples for the same draws.
        """
        rng = self._rng(row)
        prompt = sample_prompt(row["task"], rng) if self.resample_prompts else row["prompt"]
        flip_lr = flip_tb = False
        if self.augment:
            flip_lr = rng.random() < 0.5
            flip_tb = rng.random() < 0.5
        negative = bool(self.negative_prompt_ratio) and rng.random() < self.negative_prompt_ratio
        if negative:
            # any synonym, never always the canonical one: a prompt seen only in negative pairs
            # would be learnt as "predict nothing" and then fail at evaluation, which uses it
            prompt = sample_prompt(other_task(row["task"]), rng)
        return prompt, flip_lr, flip_tb, negative

    def target(self, row: dict) -> tuple[str, np.ndarray, bool]:
        """(prompt, {0,1} mask, is_negative) of an evaluation row, or of a train row without flips."""
        if self.train:
            prompt, flip_lr, flip_tb, negative = self.choices(row)
            if flip_lr or flip_tb:
                raise ValueError("flips change pixels: use `example`, not `target`")
        else:
            prompt, negative = self.target_prompt(row)
        mask = mask_array(row["mask"])
        return prompt, (np.zeros_like(mask) if negative else mask), negative

    def example(self, row: dict) -> tuple[Image.Image, str, np.ndarray, bool]:
        """(image, prompt, {0,1} mask, is_negative) of one row after this collator's random choices."""
        image, mask = row["image"].convert("RGB"), row["mask"]
        if not self.train:
            prompt, target, negative = self.target(row)
            return image, prompt, target, negative
        prompt, flip_lr, flip_tb, negative = self.choices(row)
        if flip_lr:
            image, mask = (m.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for m in (image, mask))
        if flip_tb:
            image, mask = (m.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for m in (image, mask))
        target = mask_array(mask)
        return image, prompt, (np.zeros_like(target) if negative else target), negative

    def arrays(self, row: dict, preprocessing: Preprocessing) -> tuple[np.ndarray, str, np.ndarray, bool]:
        """`example` as arrays: the (height, width, 3) uint8 image at the model's input size, the prompt, the
        bool mask at native size, is_negative. The same pixels and mask as `example` then the processor;
        flips are views of arrays (no copy) when the image is stored at the input size already."""
        if self.train:
            prompt, flip_lr, flip_tb, negative = self.choices(row)
        else:
            (prompt, negative), flip_lr, flip_tb = self.target_prompt(row), False, False
        image = row["image"] if row["image"].mode == "RGB" else row["image"].convert("RGB")
        if image.size != preprocessing.size[::-1]:  # resize after flipping, as `example` and the processor do
            if flip_lr:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if flip_tb:
                image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            pixels = preprocessing.resized(image)
        else:
            pixels = _flipped(np.asarray(image), flip_lr, flip_tb)
        mask = row["mask"] if row["mask"].mode == "L" else row["mask"].convert("L")
        mask = _flipped(np.asarray(mask) > 127, flip_lr, flip_tb)
        return pixels, prompt, (np.zeros_like(mask) if negative else mask), negative

    def target_prompt(self, row: dict) -> tuple[str, bool]:
        """(prompt, is_negative) of an evaluation row: its task's canonical prompt, or the other task's."""
        negative = self.eval_negatives
        return canonical_prompt(other_task(row["task"]) if negative else row["task"]), negative

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        preprocessing = self._preprocessing() if self.preprocess == "numpy" else None
        if preprocessing is None:  # the reference path: the processor, one PIL image at a time
            images, prompts, masks, negatives = zip(*(self.example(row) for row in rows))
            pixel_values = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
            tokens = tokenize_prompts(self.processor.tokenizer, list(prompts), padding=True, return_tensors="pt")
            input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
        else:
            images, prompts, masks, negatives = zip(*(self.arrays(row, preprocessing) for row in rows))
            pixel_values = torch.from_numpy(preprocessing.normalize(np.stack(images)))
            input_ids, attention_mask = self._tokens(prompts)
        return {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_masks(list(masks)),
            "task_ids": torch.tensor([TASKS.index(row["task"]) for row in rows]),
            "negative": torch.tensor(negatives, dtype=torch.bool),
        }

    def _preprocessing(self) -> Preprocessing | None:
        """The processor's steps, read once (their lookup table is built on first use); None for a processor
        they do not reproduce, which is then called itself."""
        key = repr(self.processor.image_processor.size)  # a processor resized later gets new steps
        if getattr(self, "_steps", (None, None))[0] != key:
            self._steps = (key, Preprocessing.of(self.processor.image_processor))
        return self._steps[1]

    def _tokens(self, prompts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of `prompts` padded to the longest, as the tokenizer pads a batch; each
        prompt is tokenized once per collator (the vocabulary is a few dozen prompts)."""
        cache = self.__dict__.setdefault("_token_cache", {})
        for prompt in set(prompts) - cache.keys():
            cache[prompt] = tokenize_prompts(self.processor.tokenizer, [prompt])["input_ids"][0]
        length = max(len(cache[p]) for p in prompts)
        input_ids = torch.full((len(prompts), length), self.processor.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, : len(cache[prompt])] = torch.tensor(cache[prompt])
            attention_mask[i, : len(cache[prompt])] = 1
        return input_ids, attention_mask


def _flipped(array: np.ndarray, left_right: bool, top_bottom: bool) -> np.ndarray:
    """A view of `array` (height first) mirrored as asked."""
    return array[::-1 if top_bottom else 1, ::-1 if left_right else 1]
