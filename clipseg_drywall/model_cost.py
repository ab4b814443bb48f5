"""What a model costs to ship and run: parameters, bytes on disk, latency per image, peak memory, FLOPs."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .segmenters.pytorch import Segmenter

WEIGHT_SUFFIXES = (".safetensors",)


def model_files_dir(name_or_path: str | Path) -> Path:
    """The directory holding a checkpoint's files: the path itself, or its snapshot in the Hub cache."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(str(name_or_path), "config.json")).parent  # cached: no download offline


def size_on_disk_mb(directory: Path) -> float:
    """Megabytes (10^6) of weight files; `os.path.getsize` follows the Hub cache's symlinks to the blobs."""
    return sum(os.path.getsize(p) for p in directory.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)) / 1e6


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    if device.type == "mps":
        return "mps (Apple silicon GPU)"
    return str(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def latency_ms_per_image(
    segmenter: Segmenter, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int
) -> float:
    """Median wall time per image of `segment(images, prompts)` run `batch_size` images at a time.

    One untimed warm-up batch first (allocations, prompt embeddings). Whole batches only.
    """
    previous, segmenter.batch_size = segmenter.batch_size, batch_size
    try:
        batches = [list(images[i : i + batch_size]) for i in range(0, len(images) - batch_size + 1, batch_size)]
        segmenter.segment(batches[0], prompts)
        times = []
        for batch in batches:
            _synchronize(segmenter.device)
            start = time.perf_counter()
            segmenter.segment(batch, prompts)
            _synchronize(segmenter.device)
            times.append((time.perf_counter() - start) * 1000 / len(batch))
        return statistics.median(times)
    finally:
        segmenter.batch_size = previous


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(megabytes, what was measured): CUDA's peak allocation, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss)"


def footprint(
    segmenter: Segmenter,
    model_dir: Path,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    batch_size: int = 8,
) -> dict:
    """The `footprint` block of metrics.json; latency covers every prompt of an image (one vision pass)."""
    model = segmenter.model
    batch_size = max(1, min(batch_size, len(images)))
    result = {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "size_on_disk_mb": round(size_on_disk_mb(model_dir), 3),
        "inference_ms_per_image": round(latency_ms_per_image(segmenter, images, prompts, 1), 2),
        "inference_ms_per_image_batched": round(latency_ms_per_image(segmenter, images, prompts, batch_size), 2),
        "batch_size": batch_size,
        "prompts_per_image": len(prompts),
        "latency_images": len(images),
        "device": device_name(segmenter.device),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    memory, memory_kind = peak_memory_mb(segmenter.device)
    result.update(peak_memory_mb=round(memory, 1), peak_memory_kind=memory_kind)
    return result


def vision_flops(config, image_size: int) -> float:
    """FLOPs (2 per multiply-add) of the vision pass the package runs: the patch embedding, then per layer
    up to the deepest extract layer the q/k/v/out projections, QK^T and AV, and the MLP (norms, softmax
    and activations are elementwise, under 1% here, left out)."""
    vision = config.vision_config
    patches = (image_size // vision.patch_size) ** 2
    tokens, width, mlp = patches + 1, vision.hidden_size, vision.intermediate_size
    patch_embedding = 2 * patches * 3 * vision.patch_size ** 2 * width
    layer = 2 * tokens * 4 * width * width + 2 * 2 * tokens * tokens * width + 2 * 2 * tokens * width * mlp
    return patch_embedding + (max(config.extract_layers) + 1) * layer
