"""Which segmenter a command runs, chosen by name, imported only when chosen.

`torch` is the `inference.Segmenter` (PyTorch + transformers); `onnx` the onnxruntime one of
`onnx_inference` (exported with `python -m clipseg_drywall.export`), which needs neither. This
module imports neither, so `predict --backend onnx` runs on the slim install.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from .images import ImageInput, load_image
from .outputs import Segmentation

BACKENDS = ("torch", "onnx")
DEFAULT_THRESHOLD = 0.5  # the decision threshold of a model whose config has none calibrated
# Opt-in speed-ups of the torch backend (see `inference.apply_speed_options`).
SPEED_OPTIONS = ("bf16", "int8", "channels_last", "compile")


def load_segmenter(
    model: str,
    backend: str = "torch",
    threshold: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    speed_options: Iterable[str] = (),
) -> BatchedSegmenter:
    """A `Segmenter` (torch) or `OnnxSegmenter` (onnx) for `model`, a checkpoint or export folder or Hub id."""
    if backend == "torch":
        from .inference import Segmenter

        return Segmenter.from_pretrained(model, threshold=threshold, batch_size=batch_size, device=device,
                                         speed_options=speed_options)
    if backend != "onnx":
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if device not in (None, "cpu") or list(speed_options):
        raise ValueError("--device and --speed apply to the torch backend; the onnx backend runs on onnxruntime's CPU "
                         "provider (export with --quantize int8 for its speed-up)")
    module = importlib.import_module(".onnx_inference", __package__)
    return module.OnnxSegmenter.from_pretrained(model, threshold=threshold, batch_size=batch_size)


class BatchedSegmenter:
    """What both backends share: the prompt checks, batching and `segment`. A subclass sets `threshold`
    and `batch_size` and gives `prompt_embeddings(prompts)` (which rejects empty prompts) and
    `_segment_batch(images, prompts, threshold, return_probabilities)`."""

    threshold: float
    batch_size: int

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
