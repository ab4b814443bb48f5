"""The segmenter contract both backends implement, torch-free.

`segmenters.pytorch.Segmenter` (PyTorch) and `segmenters.onnx.OnnxSegmenter` (onnxruntime) share everything but
the model calls: the prompt checks and the per-prompt embedding cache, batching, the threshold rule
and the result type. A backend gives `_encode_prompt(prompt)` (one prompt's conditional embedding),
`_stack(embeddings)`, `logits(images, prompts)` and `_segment_batch(...)`; this module imports
neither torch nor onnxruntime, so the slim ONNX install and `segmenters.load_segmenter` can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..images import ImageInput, load_image
from ..prompts import check_prompt

DEFAULT_THRESHOLD = 0.5  # the decision threshold of a model whose config has none calibrated
# Opt-in speed-ups of the torch backend (see `segmenters.pytorch.apply_speed_options`).
SPEED_OPTIONS = ("bf16", "int8", "channels_last", "compile")


@dataclass
class Segmentation:
    """Native-size results of one image, from any backend: `masks[prompt]` (uint8 {0,255}, (height, width))
    and, when asked for, `probabilities[prompt]` (float32)."""

    size: tuple[int, int]  # (width, height), PIL order
    masks: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray] | None = None


def threshold_of(config: Any) -> float:
    """The decision threshold saved in a model config (an object or a config.json dict); `DEFAULT_THRESHOLD`
    if absent. `evaluate.py --update_model` stores the calibrated one."""
    value = config.get("segmentation_threshold") if isinstance(config, Mapping) else getattr(
        config, "segmentation_threshold", None)
    return DEFAULT_THRESHOLD if value is None else float(value)


def check_threshold(value: float, name: str = "--threshold") -> float:
    """`value` as a float when it lies strictly between 0 and 1 (a mask needs both classes possible)."""
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return float(value)




class BatchedSegmenter:
    """What both backends share: prompt checks, the embedding cache, batching and `segment`.

    A subclass sets `threshold`, `batch_size` and `_embeddings` (the cache: {prompt: embedding}, empty or
    prefilled) and implements the model calls below.
    """

    backend: str  # "torch" | "onnx": recorded beside each mask predict writes
    threshold: float
    batch_size: int
    _embeddings: dict

    # ---- the model calls a backend implements ----

    def _encode_prompt(self, prompt: str):
        """One prompt's conditional embedding (projection_dim,), tokenized alone (no padding)."""
        raise NotImplementedError

    def _stack(self, embeddings: list):
        """(P, projection_dim) from P cached embeddings, in the backend's array type."""
        raise NotImplementedError

    def logits(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """Decoder logits (B, P, h, w) at the model's resolution: one vision pass for the B images."""
        raise NotImplementedError

    def _segment_batch(self, images: list[Image.Image], prompts: list[str], threshold: float,
                       return_probabilities: bool) -> Iterator[Segmentation]:
        raise NotImplementedError

    # ---- the batch pipeline's model stage (`clipseg_drywall.pipeline`) ----

    def preprocessor(self):
        """A picklable callable: RGB images -> the model's pixel batch (runs in the pipeline's decode workers)."""
        raise NotImplementedError

    def launch_masks(self, pixels, sizes: Sequence[tuple[int, int]], prompts: Sequence[str], threshold: float):
        """Start segmenting a prepared pixel batch: each image's masks at its own `sizes` (width, height), on the
        device; `collect_masks` of the returned handle gives them. A backend that cannot overlap computes here."""
        raise NotImplementedError

    def collect_masks(self, handle) -> Sequence[np.ndarray]:
        """Per image of a launched batch, uint8 {0, 255} masks (P, height, width) in host memory (a `LazyMasks`
        makes each when it is read, so that the pipeline's write threads make them, beside the model)."""
        return handle

    # ---- shared ----

    def prompt_embeddings(self, prompts: Sequence[str]):
        """(P, projection_dim) conditional embeddings; each prompt is encoded once per segmenter."""
        for prompt in prompts:
            if check_prompt(prompt) not in self._embeddings:
                self._embeddings[prompt] = self._encode_prompt(prompt)
        return self._stack([self._embeddings[p] for p in prompts])

    def iter_segment(
        self,
        images: Iterable[ImageInput],
        prompts: Sequence[str],
        threshold: float | None = None,
        return_probabilities: bool = False,
    ) -> Iterator[Segmentation]:
        """One `Segmentation` per image, in order, computed `batch_size` images at a time."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompt given: pass at least one, e.g. 'segment crack'")
        self.prompt_embeddings(prompts)  # reject empty prompts before any image work
        threshold = self.threshold if threshold is None else float(threshold)
        batch: list[Image.Image] = []
        for image in images:
            batch.append(load_image(image))
            if len(batch) == self.batch_size:
                yield from self._segment_batch(batch, prompts, threshold, return_probabilities)
                batch = []
        if batch:
            yield from self._segment_batch(batch, prompts, threshold, return_probabilities)

    def segment(
        self, images: Iterable[ImageInput], prompts: Sequence[str], threshold: float | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Per image, `{prompt: uint8 mask}` with values {0, 255} and the image's (height, width)."""
        return [result.masks for result in self.iter_segment(images, prompts, threshold)]


class LazyMasks(Sequence):
    """A batch's per-image masks, each made when read: `make(i)` -> uint8 (P, height, width)."""

    def __init__(self, make: Callable[[int], np.ndarray], count: int):
        self._make, self._count = make, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._make(index % self._count)
