"""The GPU path: a training step (fp32 and bf16 autocast), the feature cache and `Segmenter` on cuda.

Skipped without a CUDA GPU; run them where one is: `python -m pytest -q -m cuda tests`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .helpers import make_trainer, requires_shared

pytestmark = [
    pytest.mark.cuda,
    requires_shared,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]




@pytest.mark.parametrize("bf16", [False, True])
def test_training_steps_on_cuda(tiny_config_dir, tiny_drywall_dir, tmp_path, bf16):
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir,
                           max_steps=2, encoder_learning_rate=1e-3, dataloader_pin_memory=True, bf16=bf16)
    before = trainer.model.decoder.film_mul.weight.detach().clone()
    encoder_before = trainer.model.clip.vision_model.encoder.layers[0].mlp.fc1.weight.detach().clone()
    trainer.train()
    assert trainer.model.device.type == "cuda"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not torch.equal(before, trainer.model.decoder.film_mul.weight.detach())
    assert not torch.equal(encoder_before, trainer.model.clip.vision_model.encoder.layers[0].mlp.fc1.weight.detach())
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0


def test_feature_cache_path_on_cuda(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = make_trainer(tmp_path / "out", tiny_drywall_dir, config_dir=tiny_config_dir,
                           max_steps=2, encoder_learning_rate=1e-3, dataloader_pin_memory=True, freeze_encoder=True,
                           data={"cache_features": True, "feature_cache_dir": str(tmp_path / "cache")})
    trainer.train()
    assert list((tmp_path / "cache").glob("*/activations.npy"))
    assert all(np.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


def test_segmenter_on_cuda_matches_cpu(tiny_model_dir):
    from PIL import Image

    from clipseg_drywall.segmenters.pytorch import Segmenter

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8))
    prompts = ["segment crack", "segment taping area"]
    gpu = Segmenter.from_pretrained(tiny_model_dir, device="cuda")
    cpu = Segmenter.from_pretrained(tiny_model_dir)
    assert gpu.device.type == "cuda"
    on_gpu = gpu.iter_segment([image], prompts, return_probabilities=True).__next__()
    on_cpu = cpu.iter_segment([image], prompts, return_probabilities=True).__next__()
    for prompt in prompts:
        assert on_gpu.masks[prompt].shape == (120, 90)
        assert np.abs(on_gpu.probabilities[prompt] - on_cpu.probabilities[prompt]).max() < 1e-3


def test_lora_training_steps_on_cuda(tiny_config_dir, tiny_drywall_dir, tmp_path):
    """LoRA (rank 4) with gradient checkpointing: adapters and decoder move on the GPU, CLIP stays as it was."""
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir,
                           max_steps=2, encoder_learning_rate=1e-3, dataloader_pin_memory=True, lora_rank=4,
                           gradient_checkpointing=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.model.device.type == "cuda"
    for name, parameter in trainer.model.named_parameters():
        moved = not torch.equal(parameter.detach(), before[name])
        assert moved == ("lora_" in name or name.startswith("decoder.")), name


def test_the_pipeline_on_cuda_gives_the_serial_masks(tiny_model_dir, tmp_path):
    """Decode workers, pinned memory, non-blocking copies and device-side upsample + threshold: the masks
    `Segmenter.iter_segment` gives on cuda, as uint8 from one copy per batch."""
    from PIL import Image

    from clipseg_drywall.pipeline import PipelineOptions, Work, deal, run
    from clipseg_drywall.segmenters.pytorch import PendingMasks, Segmenter

    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(120, 90), (64, 200), (301, 203), (90, 120), (50, 50)]):
        paths.append(tmp_path / f"p{index}.png")
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    prompts = ["segment crack", "segment taping area"]
    segmenter = Segmenter.from_pretrained(tiny_model_dir, device="cuda", batch_size=2)
    segmenter.threshold = 0.5
    serial = [result.masks for result in segmenter.iter_segment(paths, prompts)]
    pixels = segmenter.preprocessor()([Image.open(paths[0]).convert("RGB")]).pin_memory()
    handle = segmenter.launch_masks(pixels, [(120, 90)], prompts, 0.5)
    assert isinstance(handle, PendingMasks) and handle.host.is_pinned()
    (collected,) = segmenter.collect_masks(handle)
    assert collected.dtype == np.uint8 and collected.shape == (2, 90, 120)
    options = PipelineOptions().resolved("cuda", 8)
    assert options.pin_memory and options.num_workers >= 1
    works = [Work(str(path), path) for path in paths]
    found = []
    for batch in run(segmenter, (b for _, b in deal(works, 2, 0, 1)), prompts, lambda done: done.masks,
                     options=options):
        found += [masks for _, masks in batch.results]
    assert len(found) == len(serial)
    for ours, theirs in zip(found, serial):
        for prompt in prompts:
            assert np.array_equal(ours[prompt], theirs[prompt])
