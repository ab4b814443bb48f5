"""Segmenter: images + prompts -> {0, 255} masks at each image's own size.

Speed comes from the structure of CLIPSeg: the CLIP vision pass (most of the compute) depends
only on the image, the text pass only on the prompt, and only the small decoder needs both.
So a batch of images gets one vision pass, each prompt's embedding is computed once and cached,
and the decoder runs on every (image, prompt) pair of the batch in one call.

Numerics are those of the stock `CLIPSegForImageSegmentation.forward` (same functions as
`modeling.py`); logits are upsampled (`upsampling.py`) to the image's size *before* the sigmoid and threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from ..modeling import decode, text_embeddings, vision_activations
from ..preprocessing import Preprocessing
from ..prompts import tokenize_prompts
from ..upsampling import native_probabilities, threshold_masks
from .base import SPEED_OPTIONS, BatchedSegmenter, LazyMasks, Segmentation, threshold_of


def apply_speed_options(model: CLIPSegForImageSegmentation, options: Iterable[str] = ()) -> CLIPSegForImageSegmentation:
    """Opt-in CPU speed-ups, in place. All but `channels_last` change the numerics a little
    (`benchmarks/inference.py` measures speed, `evaluate.py --speed_options` the IoU change).

    bf16: weights and activations in bfloat16. int8: dynamic int8 quantisation of the Linear
    layers (weights int8, activations quantised per batch; CPU only). channels_last: memory
    format of the decoder's convolutions. compile: `torch.compile` of the vision layers and
    the decoder (the first batch of each shape pays the compilation).
    """
    options = set(options)
    unknown = options - set(SPEED_OPTIONS)
    if unknown:
        raise ValueError(f"unknown speed options {sorted(unknown)}; choose from {SPEED_OPTIONS}")
    if "bf16" in options and "int8" in options:
        raise ValueError("bf16 and int8 do not combine: int8 quantises float32 Linear layers")
    if "bf16" in options:
        model.to(torch.bfloat16)
    if "int8" in options:
        model.clip = torch.ao.quantization.quantize_dynamic(model.clip, {torch.nn.Linear}, dtype=torch.qint8)
        model.decoder = torch.ao.quantization.quantize_dynamic(model.decoder, {torch.nn.Linear}, dtype=torch.qint8)
    if "channels_last" in options:
        model.decoder.to(memory_format=torch.channels_last)
    if "compile" in options:
        for layer in model.clip.vision_model.encoder.layers:
            layer.compile(dynamic=False)
        model.decoder.compile(dynamic=False)
    return model


class Segmenter(BatchedSegmenter):
    """Text-prompted segmentation with a CLIPSeg checkpoint.

    >>> segmenter = Segmenter.from_pretrained("runs/clipseg-small")
    >>> masks = segmenter.segment(["photo.jpg"], ["segment crack", "segment taping area"])
    >>> masks[0]["segment crack"].shape  # (height, width) of photo.jpg, values {0, 255}
    """

    backend = "torch"

    def __init__(
        self,
        model: CLIPSegForImageSegmentation,
        processor: CLIPSegProcessor,
        threshold: float | None = None,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        speed_options: Iterable[str] = (),
    ):
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        apply_speed_options(self.model, speed_options)
        self.processor = processor
        self.threshold = threshold_of(model.config) if threshold is None else float(threshold)
        self.batch_size = batch_size
        self._embeddings: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        threshold: float | None = None,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        speed_options: Iterable[str] = (),
        num_threads: int | None = None,
        **hub_kwargs,
    ) -> Segmenter:
        """A local checkpoint directory or a Hub id (safetensors only, never remote code); `num_threads`
        sets torch's CPU threads (a process launched beside others gets its share of the cores)."""
        if num_threads and torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)
        model = CLIPSegForImageSegmentation.from_pretrained(str(name_or_path), use_safetensors=True, **hub_kwargs)
        processor = CLIPSegProcessor.from_pretrained(str(name_or_path), **hub_kwargs)
        return cls(model, processor, threshold=threshold, batch_size=batch_size, device=device,
                   speed_options=speed_options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """Tokenized on its own (no padding), exactly as the stock per-pair call does."""
        limit = self.model.config.text_config.max_position_embeddings
        tokens = tokenize_prompts(self.processor.tokenizer, [prompt], limit, return_tensors="pt").to(self.device)
        return text_embeddings(self.model, tokens["input_ids"], tokens["attention_mask"])[0]

    def _stack(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(embeddings)

    def preprocessor(self) -> PixelValues:
        if getattr(self, "_pixel_values", None) is None:
            self._pixel_values = PixelValues(self.processor.image_processor)
        return self._pixel_values

    @torch.inference_mode()
    def logits(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Decoder logits (B, P, h, w) at the processor's resolution: one vision pass for the B images."""
        return self._logits_from_pixels(self.preprocessor()(images), prompts)

    def _logits_from_pixels(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        conditional = self.prompt_embeddings(prompts)
        # non_blocking: from pinned memory (the pipeline's on cuda) the copy overlaps; otherwise it is a plain copy
        activations = vision_activations(self.model, pixels.to(self.device, self.model.dtype, non_blocking=True))
        n_images, n_prompts = pixels.shape[0], len(prompts)
        # every (image, prompt) pair in one decoder call: activations repeated per prompt (image-major)
        pairs = [a.repeat_interleave(n_prompts, dim=0) for a in activations]
        logits = decode(self.model, pairs, conditional.repeat(n_images, 1))
        return logits.reshape(n_images, n_prompts, *logits.shape[-2:])

    def _segment_batch(self, images, prompts, threshold, return_probabilities) -> Iterator[Segmentation]:
        logits = self.logits(images, prompts)
        for image, image_logits in zip(images, logits):
            probabilities = native_probabilities(image_logits, (image.height, image.width))
            masks = threshold_masks(probabilities, threshold).cpu().numpy()
            yield Segmentation(
                size=image.size,
                masks=dict(zip(prompts, masks)),
                probabilities=dict(zip(prompts, probabilities.cpu().numpy())) if return_probabilities else None,
            )

    @torch.inference_mode()
    def launch_masks(self, pixels, sizes, prompts, threshold) -> LazyMasks | PendingMasks:
        """The batch's masks, made on the device exactly as `_segment_batch` makes them (native-size upsample,
        sigmoid, threshold, uint8); on cuda one non-blocking copy of all of them into pinned memory, waited for
        in `collect_masks` (the device goes on with the next batch meanwhile)."""
        logits = self._logits_from_pixels(torch.as_tensor(pixels), prompts)
        if self.device.type != "cuda":  # made when read, in the pipeline's write threads (beside the next batch)
            return LazyMasks(functools.partial(_native_masks, logits, sizes, threshold), len(sizes))
        masks = [threshold_masks(native_probabilities(image_logits, (height, width)), threshold)
                 for image_logits, (width, height) in zip(logits, sizes)]
        flat = torch.cat([mask.reshape(-1) for mask in masks])
        host = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return PendingMasks(host, ready, [tuple(mask.shape) for mask in masks])

    def collect_masks(self, handle) -> list:
        if not isinstance(handle, PendingMasks):
            return handle
        handle.ready.synchronize()
        views, start = [], 0
        array = handle.host.numpy()
        for shape in handle.shapes:
            count = shape[0] * shape[1] * shape[2]
            views.append(array[start:start + count].reshape(shape))
            start += count
        return views


@torch.inference_mode()
def _native_masks(logits: torch.Tensor, sizes, threshold: float, index: int) -> np.ndarray:
    width, height = sizes[index]
    return threshold_masks(native_probabilities(logits[index], (height, width)), threshold).cpu().numpy()


class PixelValues:
    """The processor's image steps as the pipeline's decode workers run them (picklable): `preprocessing.Preprocessing`'s
    numpy tables where they give the processor's pixels bit for bit (checked on a probe image here), else the
    processor itself."""

    def __init__(self, image_processor):
        self.image_processor = image_processor
        self.fast = Preprocessing.of(image_processor)
        if self.fast is not None:
            probe = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (53, 67, 3), dtype=np.uint8))]
            if not np.array_equal(self.fast.pixel_values(probe),
                                  image_processor(images=probe, return_tensors="np")["pixel_values"]):
                self.fast = None

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.fast is not None:
            return torch.from_numpy(self.fast.pixel_values(images))
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]


@dataclass
class PendingMasks:
    """A cuda batch's masks on their way to pinned host memory: flat bytes, the copy's event, each image's shape."""

    host: torch.Tensor
    ready: torch.cuda.Event
    shapes: list[tuple[int, int, int]]
