"""Inference speed for 2 prompts per image, measured side by side in one run.

Same model (the full-size CLIPSeg config of CIDAS/clipseg-rd64-refined with random weights:
speed does not depend on the values), same 640x640 photos from ../shared/data, repetitions
interleaved across the variants, medians reported:

  naive       CLIPSegProcessor + CLIPSegForImageSegmentation per (image, prompt) pair, batch 1,
              as the usual model-card snippet does (under torch.no_grad; also under inference_mode)
  package     clipseg_drywall.inference.Segmenter, batch 1 and at its best batch size, then at
              batch 1 with each opt-in speed option (bf16, int8, channels_last, compile)
  floor       the CLIP vision pass alone per image (pixel values prepared beforehand)

    python benchmarks/inference.py [--images 16] [--repeats 3] [--batch-sizes 1 4 8] [--no-compile]

Last line: `speedup_vs_naive=<x> floor_ratio=<y>` (default package at batch 1 vs naive; best
default-package time per image vs the floor). Options that change numerics are not in that
line: their IoU change is measured with `evaluate.py --speed_options` (see the README).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402
from clipseg_drywall.inference import SPEED_OPTIONS, Segmenter  # noqa: E402
from clipseg_drywall.modeling import model_from_config  # noqa: E402

PROMPTS = ["segment crack", "segment taping area"]


def load_images(count: int) -> list[Image.Image]:
    folders = [SHARED / "data" / "cracks" / "valid" / "images", SHARED / "data" / "drywall-join-detect" / "valid"]
    paths = sorted(p for folder in folders for p in folder.glob("*.jpg"))
    step = max(len(paths) // count, 1)
    return [Image.open(p).convert("RGB") for p in paths[::step][:count]]


def naive(model: CLIPSegForImageSegmentation, processor: CLIPSegProcessor, images: list[Image.Image],
          inference_mode: bool = False) -> None:
    with torch.inference_mode() if inference_mode else torch.no_grad():
        for image in images:
            for prompt in PROMPTS:
                inputs = processor(text=[prompt], images=[image], padding=True, return_tensors="pt")
                logits = model(**inputs).logits
                mask = torch.nn.functional.interpolate(logits[None], size=image.size[::-1], mode="bilinear")
                (mask.sigmoid() > 0.5).numpy()


def floor(model: CLIPSegForImageSegmentation, pixel_values: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for pixels in pixel_values:
            model.clip.vision_model(pixel_values=pixels)


def package(segmenter: Segmenter, images: list[Image.Image], batch_size: int) -> None:
    segmenter.batch_size = batch_size
    segmenter.segment(images, PROMPTS)


def median_per_image(run: Callable[[], None], n_images: int, timings: list[float]) -> None:
    started = time.perf_counter()
    run()
    timings.append((time.perf_counter() - started) / n_images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to compile)")
    args = parser.parse_args()
    if not (SHARED / "clipseg-rd64-refined").is_dir():
        print(f"skip: {SHARED / 'clipseg-rd64-refined'} not found (the CIDAS config and processor files)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = CLIPSegConfig.from_pretrained(SHARED / "clipseg-rd64-refined")
    processor = CLIPSegProcessor.from_pretrained(SHARED / "clipseg-rd64-refined")
    model = model_from_config(config).eval()
    segmenter = Segmenter(model, processor)
    images = load_images(args.images)
    pixel_values = [processor(images=[im], return_tensors="pt")["pixel_values"] for im in images]

    variants: dict[str, Callable[[], None]] = {
        "naive (per pair, batch 1)": lambda: naive(model, processor, images),
        "naive + inference_mode": lambda: naive(model, processor, images, inference_mode=True),
        "floor (vision pass only)": lambda: floor(model, pixel_values),
    }
    for batch_size in args.batch_sizes:
        variants[f"package batch {batch_size}"] = lambda b=batch_size: package(segmenter, images, b)
    options = [o for o in SPEED_OPTIONS if not (o == "compile" and args.no_compile)]
    for option in options:
        optimised = Segmenter(copy.deepcopy(model), processor, speed_options=[option])
        variants[f"package batch 1 + {option}"] = lambda s=optimised: package(s, images, 1)
    for name, run in list(variants.items()):  # warm-up: first calls allocate, pick kernels, compile
        started = time.perf_counter()
        try:
            run()
        except Exception as error:  # an option this machine cannot run (e.g. no compiler for torch.compile)
            print(f"warm-up {name}: unavailable here ({type(error).__name__}: {str(error)[:200]})", flush=True)
            del variants[name]
            continue
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    for image in images:
        processor(images=[image], return_tensors="pt")
    preprocessing = (time.perf_counter() - started) / len(images)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, run in variants.items():
            median_per_image(run, len(images), timings[name])

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"device=cpu threads={torch.get_num_threads()} images={len(images)} prompts/image={len(PROMPTS)} "
          f"repeats={args.repeats} model=clipseg-rd64-refined config (random weights)")
    for name, seconds in medians.items():
        print(f"{name:<30} {1000 * seconds:8.1f} ms/image  {1 / seconds:6.2f} images/s"
              f"  x{medians['naive (per pair, batch 1)'] / seconds:.2f} vs naive")
    print(f"{'(processor on one 640x640 image)':<28} {1000 * preprocessing:8.1f} ms/image: naive pays it per prompt")
    package_times = {n: s for n, s in medians.items() if n.startswith("package") and "+" not in n}
    best = min(package_times, key=package_times.get)
    speedup = medians["naive (per pair, batch 1)"] / medians["package batch 1"]
    floor_ratio = package_times[best] / medians["floor (vision pass only)"]
    print(f"best package setting: {best}")
    print(f"speedup_vs_naive={speedup:.2f} floor_ratio={floor_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
