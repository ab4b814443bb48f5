"""The frozen-encoder fast path: cached CLIP features, pre-resized images, and their fall-backs."""

from __future__ import annotations

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from transformers import CLIPSegProcessor

from clipseg_drywall.arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments
from clipseg_drywall.modeling import segmentation_logits
from clipseg_drywall.training.collator import CLIPSegCollator, resize_images
from clipseg_drywall.training.feature_cache import build_feature_cache, cache_key
from clipseg_drywall.training.run_training import build_trainer
from clipseg_drywall.training.sampling import DrawDataset

from .helpers import CLIPSEG_FILES, QUIET, make_trainer, requires_shared

pytestmark = requires_shared





def _trainer(config_dir, data_dir, output_dir, cache_dir, cache: bool, **data):
    """Four decoder-only steps, from the pixels or from the cache in `cache_dir`."""
    return make_trainer(output_dir, data_dir, config_dir=config_dir, max_steps=4, freeze_encoder=True,
                        data={"cache_features": cache, "feature_cache_dir": str(cache_dir), **data})


def _losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_resized_images_give_bit_identical_pixels(tiny_drywall_dir):
    processor = CLIPSegProcessor.from_pretrained(CLIPSEG_FILES)
    rows = datasets.load_from_disk(str(tiny_drywall_dir))["train"].select(range(3))
    resized = resize_images(rows, processor)
    assert resized[0]["image"].size == (352, 352) and resized[0]["mask"].size == rows[0]["mask"].size
    collate = CLIPSegCollator(processor, train=False)
    original, small = collate(list(rows)), collate(list(resized))
    assert torch.equal(original["pixel_values"], small["pixel_values"])
    assert torch.equal(original["labels"], small["labels"])  # masks stay at native size


def test_cached_training_follows_the_pixel_path(tiny_config_dir, tiny_drywall_dir, tmp_path):
    options = {"resample_prompts": True, "negative_prompt_ratio": 0.5}
    plain = _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "plain", tmp_path / "cache", False, **options)
    plain.train()
    cached = _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "cached", tmp_path / "cache", True, **options)
    assert "image" not in cached.train_dataset.rows.column_names  # the features stand in for the pixels
    batch = next(iter(cached.get_train_dataloader()))
    assert "pixel_values" not in batch and batch["activations"].dtype == torch.float32
    start = torch.cat([p.detach().flatten().clone() for p in cached.model.decoder.parameters()])
    cached.train()
    # the same examples in the same order; only the float16 storage of the features differs
    assert _losses(cached) == pytest.approx(_losses(plain), rel=2e-3)
    a, b = (torch.cat([p.detach().flatten() for p in t.model.decoder.parameters()]) for t in (plain, cached))
    assert (a - b).norm() < 0.02 * (a - start).norm()  # both made the same update, up to float16 noise
    assert torch.equal(plain.model.clip.vision_model.embeddings.patch_embedding.weight,
                       cached.model.clip.vision_model.embeddings.patch_embedding.weight)
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 1 and not entries[0].name.endswith(".partial")
    assert json.loads((entries[0] / "meta.json").read_text())["rows"] == len(cached.train_dataset)


def test_a_later_run_finds_the_cache(tiny_config_dir, tiny_drywall_dir, tmp_path):
    _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "first", tmp_path / "cache", True)
    (entry,) = list((tmp_path / "cache").iterdir())
    built = (entry / "activations.npy").stat().st_mtime_ns
    _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "second", tmp_path / "cache", True)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]
    assert (entry / "activations.npy").stat().st_mtime_ns == built  # read, not rebuilt
    # a key taken after the Trainer has set its runtime flags (use_cache=False) names the same entry
    plain = _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "plain", tmp_path / "cache", False)
    assert cache_key(plain.model, plain.processing_class, plain.train_dataset.rows) == entry.name


def test_cache_key_follows_weights_processor_and_rows(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "out", tmp_path / "cache", False)
    model, processor = trainer.model, trainer.processing_class
    rows = trainer.train_dataset.rows
    key = cache_key(model, processor, rows)
    assert cache_key(model, processor, rows) == key
    assert cache_key(model, processor, rows.select(range(4))) != key
    with torch.no_grad():
        model.clip.vision_model.embeddings.patch_embedding.weight[0, 0, 0, 0] += 1e-3
    assert cache_key(model, processor, rows) != key
    processor.image_processor.size = {"height": 224, "width": 224}
    assert cache_key(model, processor, rows) not in (key,)


def test_cached_features_are_the_model_activations(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "out", tmp_path / "cache", False)
    model, processor, rows = trainer.model.eval(), trainer.processing_class, trainer.train_dataset.rows
    cache = build_feature_cache(model, processor, rows, tmp_path / "cache", batch_size=3)
    collate = CLIPSegCollator(processor, train=False)
    batch = collate([rows[i] for i in range(2)])
    from clipseg_drywall.modeling import vision_activations

    with torch.no_grad():
        expected = torch.stack(vision_activations(model, batch["pixel_values"]), 1)
        stock = segmentation_logits(model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        from_cache = model(activations=torch.from_numpy(cache.activations[:2].astype(np.float32)),
                           conditional_embeddings=torch.stack([cache.embedding("segment crack")] * 2)).logits
    assert torch.allclose(torch.from_numpy(cache.activations[:2].astype(np.float32)), expected, atol=2e-2)
    assert torch.allclose(from_cache, stock, atol=5e-2)
    assert build_feature_cache(model, processor, rows, tmp_path / "cache").path == cache.path  # reused


def test_cache_refusals_are_explained(tiny_config_dir, tiny_drywall_dir, tmp_path, caplog):
    with pytest.raises(ValueError, match="--freeze_encoder"):
        build_trainer(
            ModelArguments(config_name=str(tiny_config_dir), tokenizer_name=str(CLIPSEG_FILES)),
            DataArguments(dataset_path=str(tiny_drywall_dir), cache_features=True),
            CLIPSegTrainingArguments(output_dir=str(tmp_path), **QUIET),
        )
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tiny_config_dir, tiny_drywall_dir, tmp_path / "out", tmp_path / "cache", True, augment=True)
    assert "--augment changes pixels" in caplog.text
    assert "image" in trainer.train_dataset.rows.column_names and not (tmp_path / "cache").exists()
    assert DataArguments(dataset_path="d").feature_cache_root().as_posix() == "d/feature_cache"
    assert isinstance(trainer.train_dataset, DrawDataset)
