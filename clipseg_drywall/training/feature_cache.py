"""Frozen-encoder training from cached CLIP features.

With `--freeze_encoder` the decoder's inputs never change: the `extract_layers` activations of
each image and the text embedding of each vocabulary prompt. They are computed once, stored on
disk (a float16 `.npy` memory map plus the prompt embeddings), and the decoder trains from them
without running CLIP at all.

The cache key covers everything the features depend on: the model config, the CLIP weights,
the image processor's settings and the dataset's fingerprint, so a stale cache is never read.
Augmentations that change pixels (flips) would need new features per step: they cannot use the
cache, and `resolve_cache_use` says so and falls back to the plain path. Only the train split is
cached: evaluation runs the full model on pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPSegForImageSegmentation

from ..modeling import text_embeddings, vision_activations
from ..prompts import TASKS, all_prompts, tokenize_prompts
from .collator import CLIPSegCollator, pad_masks

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
ACTIVATIONS_FILE = "activations.npy"
PROMPTS_FILE = "prompt_embeddings.npy"
META_FILE = "meta.json"
RUNTIME_CONFIG_KEYS = ("use_cache",)


def _dataset_fingerprint(dataset) -> str:
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        return fingerprint
    return hashlib.sha256("\n".join(dataset["image_id"]).encode()).hexdigest()


def cache_key(model: CLIPSegForImageSegmentation, processor, dataset) -> str:
    """A digest of what the cached features depend on (config, CLIP weights, processor, rows)."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    config = model.config.to_dict()
    for runtime_only in RUNTIME_CONFIG_KEYS:  # the Trainer flips these; the features do not change
        config.pop(runtime_only, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(processor.image_processor.to_json_string().encode())
    for name, tensor in sorted(model.clip.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(_dataset_fingerprint(dataset).encode())
    return digest.hexdigest()[:20]


@dataclass
class FeatureCache:
    """Cached decoder inputs for the rows of one dataset split."""

    path: Path
    activations: np.ndarray  # (rows, len(extract_layers), tokens, hidden), float16 memory map
    prompts: list[str]
    prompt_embeddings: np.ndarray  # (len(prompts), projection_dim), float32

    @classmethod
    def load(cls, path: Path) -> FeatureCache:
        meta = json.loads((path / META_FILE).read_text())
        return cls(
            path=path,
            activations=np.load(path / ACTIVATIONS_FILE, mmap_mode="r"),
            prompts=meta["prompts"],
            prompt_embeddings=np.load(path / PROMPTS_FILE),
        )

    def embedding(self, prompt: str) -> torch.Tensor:
        try:
            return torch.from_numpy(self.prompt_embeddings[self.prompts.index(prompt)])
        except ValueError:
            raise KeyError(f"prompt {prompt!r} is not in the feature cache {self.path}; cached prompts: {self.prompts}") from None

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir())


@torch.inference_mode()
def _write(model, processor, dataset, path: Path, batch_size: int) -> None:
    images = dataset.select_columns(["image"])
    activations = None
    for start in tqdm(range(0, len(images), batch_size), desc="caching CLIP features", unit="batch"):
        batch = images[start : start + batch_size]["image"]
        pixel_values = processor(images=[im.convert("RGB") for im in batch], return_tensors="pt")["pixel_values"]
        stacked = torch.stack(vision_activations(model, pixel_values.to(model.device)), dim=1)
        if activations is None:
            shape = (len(images), *stacked.shape[1:])
            activations = np.lib.format.open_memmap(path / ACTIVATIONS_FILE, mode="w+", dtype=np.float16, shape=shape)
        activations[start : start + len(batch)] = stacked.float().cpu().numpy()
    activations.flush()
    prompts = all_prompts()
    tokens = tokenize_prompts(processor.tokenizer, prompts, padding=True, return_tensors="pt").to(model.device)
    embeddings = text_embeddings(model, tokens["input_ids"], tokens["attention_mask"]).float().cpu().numpy()
    np.save(path / PROMPTS_FILE, embeddings)
    (path / META_FILE).write_text(json.dumps({"format": CACHE_FORMAT, "rows": len(images), "prompts": prompts}))


def build_feature_cache(
    model: CLIPSegForImageSegmentation, processor, dataset, root: str | Path, batch_size: int = 16
) -> FeatureCache:
    """The cache for `dataset` under `root/<key>`, computed now unless a complete one is there."""
    path = Path(root) / cache_key(model, processor, dataset)
    if (path / META_FILE).is_file():
        logger.info("using cached CLIP features in %s", path)
        return FeatureCache.load(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    was_training = model.training
    model.eval()
    try:
        _write(model, processor, dataset, partial, batch_size)
    finally:
        model.train(was_training)
    partial.rename(path)  # only a complete cache ever has the final name
    return FeatureCache.load(path)


def resolve_cache_use(requested: bool, freeze_encoder: bool, augment: bool) -> bool:
    """Whether training can read cached features; explains every refusal in the log."""
    if not requested:
        return False
    if not freeze_encoder:
        raise ValueError("--cache_features needs --freeze_encoder: a trained encoder changes its features every step")
    if augment:
        logger.warning("--augment changes pixels, so cached features would be wrong: training without the cache")
        return False
    return True


@dataclass
class CachedFeatureCollator(CLIPSegCollator):
    """A train batch from cached features: `activations` and `conditional_embeddings` instead of pixels
    and tokens. The prompt, negative-pair and mask choices are `CLIPSegCollator.choices`, so a run
    from the cache sees the same examples as a run from pixels with the same seed."""

    cache: FeatureCache | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.cache is None:
            raise ValueError("CachedFeatureCollator needs `cache` (see `build_feature_cache`)")
        if self.augment or not self.train:
            raise ValueError("cached features serve un-augmented train batches only; evaluate with CLIPSegCollator")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if any("index" not in row for row in rows):
            raise KeyError("rows need an `index` into the cache: wrap the dataset in sampling.DrawDataset")
        prompts, masks, negatives = zip(*(self.target(row) for row in rows))
        indices = [row["index"] for row in rows]
        return {
            "activations": torch.from_numpy(self.cache.activations[indices].astype(np.float32)),
            "conditional_embeddings": torch.stack([self.cache.embedding(p) for p in prompts]),
            "labels": pad_masks(list(masks)),
            "task_ids": torch.tensor([TASKS.index(row["task"]) for row in rows]),
            "negative": torch.tensor(negatives, dtype=torch.bool),
        }
