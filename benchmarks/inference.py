"""Inference speed for 2 prompts per image, measured side by side in one run.

Same model (the full-size CLIPSeg config of CIDAS/clipseg-rd64-refined with random weights:
speed does not depend on the values), same 640x640 photos from ../shared/data, repetitions
interleaved across the variants, medians reported:

  naive       CLIPSegProcessor + CLIPSegForImageSegmentation per (image, prompt) pair, batch 1,
              as the usual model-card snippet does (under torch.no_grad; also under inference_mode)
  package     clipseg_drywall.Segmenter, batch 1 and at its best batch size, then at
              batch 1 with each opt-in speed option (bf16, int8, channels_last, compile)
  floor       the CLIP vision pass alone per image (pixel values prepared beforehand)
  onnx        clipseg_drywall.OnnxSegmenter at batch 1 on the same model exported with
              `clipseg_drywall.segmenters.export` (float32, and `--quantize int8`), in this process, same images

Then the cold start of each backend: a fresh `python -m clipseg_drywall.predict` (torch checkpoint, or
`--backend onnx` on the float32 export) from process start to the masks of one photo written. And the
FLOPs of the vision pass (from the config: patch embedding, attention and MLP of the layers run, up to
the deepest extract layer) against this CPU's peak for fp32, bf16 and int8 (see `cpu_peaks`).

    python benchmarks/inference.py [--images 16] [--repeats 3] [--batch-sizes 1 4 8] [--no-compile] [--no-onnx]

Last line: `speedup_vs_naive=<x> floor_ratio=<y> onnx_fp32_vs_package=<a> onnx_int8_vs_package=<b>
cold_start_onnx_vs_torch=<c>` (default package at batch 1 vs naive; best default-package time per image
vs the floor; package batch 1 time / ORT time, so above 1 means ORT is faster; ORT cold start / torch
cold start). Options that change numerics are not in that line: their IoU change is measured with
`evaluate.py --speed_options` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402
from clipseg_drywall.model_cost import vision_flops  # noqa: E402
from clipseg_drywall.modeling import model_from_config  # noqa: E402
from clipseg_drywall.segmenters.pytorch import SPEED_OPTIONS, Segmenter  # noqa: E402

ONNX_ROWS = {"onnx fp32 batch 1": None, "onnx int8 batch 1": "int8"}

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


def export_onnx(model: CLIPSegForImageSegmentation, processor: CLIPSegProcessor, folder: Path) -> dict[str, Path]:
    """The benchmark's model saved as a checkpoint and exported (float32, int8): {row name: export folder}."""
    from clipseg_drywall.segmenters.export import export

    model.save_pretrained(folder / "checkpoint")
    processor.save_pretrained(folder / "checkpoint")
    folders = {}
    for name, quantize in ONNX_ROWS.items():
        started = time.perf_counter()
        folders[name] = export(folder / "checkpoint", folder / (quantize or "fp32"), quantize=quantize)
        print(f"export for {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return folders


def cold_start(model_folder: Path, photo: Path, backend: str, output: Path) -> float:
    """Seconds from a fresh `python -m clipseg_drywall.predict` to its masks of one photo written."""
    command = [sys.executable, "-m", "clipseg_drywall.predict", "--model", str(model_folder), "--backend", backend,
               "--output", str(output), str(photo)] + [a for p in PROMPTS for a in ("--prompt", p)]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started




def cpu_peaks() -> tuple[dict[str, float], str]:
    """({fp32, bf16, int8: peak FLOP/s (ops/s for int8)}, how it was derived): cores x clock x per-core
    FLOP/cycle, by the widest matrix unit lscpu's flags show. Per core and cycle: fp32 AVX-512 2 FMA
    units x 16 lanes x 2 = 64 (AVX2: 32); bf16 AMX 1024 (AVX512_BF16 dot product: 128); int8 AMX 2048
    (AVX512-VNNI: 2 units x 64 byte products x 2 = 256; AVX-VNNI: 128). The clock is /proc/cpuinfo's
    (the nominal one a VM shows; turbo would raise every peak alike)."""
    flags = set(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split())
    mhz = next((float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")), 2000.0)
    cores = len(os.sched_getaffinity(0))
    fp32 = ("AVX-512 FMA", 64) if "avx512f" in flags else ("AVX2 FMA", 32)
    bf16 = ("AMX-BF16", 1024) if "amx_bf16" in flags else ("AVX512_BF16", 128) if "avx512_bf16" in flags else fp32
    int8 = next(((name, n) for flag, name, n in (("amx_int8", "AMX-INT8", 2048), ("avx512_vnni", "AVX512-VNNI", 256),
                                                  ("avx_vnni", "AVX-VNNI", 128)) if flag in flags), (fp32[0], 2 * fp32[1]))
    units = {"fp32": fp32, "bf16": bf16, "int8": int8}
    peaks = {kind: cores * mhz * 1e6 * per_cycle for kind, (_, per_cycle) in units.items()}
    how = f"{cores} cores x {mhz / 1000:.2f} GHz x " + ", ".join(f"{kind} {n}/cycle ({name})"
                                                                 for kind, (name, n) in units.items())
    return peaks, how


def row_kind(name: str) -> str:
    """Which number format a row computes in, for its limit."""
    return "bf16" if "bf16" in name else "int8" if "int8" in name else "fp32"


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
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows and the cold starts")
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
    scratch = tempfile.TemporaryDirectory(prefix="clipseg-benchmark-")  # checkpoint and exports, removed at exit
    exports = {} if args.no_onnx else export_onnx(model, processor, Path(scratch.name))
    if exports:
        from clipseg_drywall.segmenters.onnx import OnnxSegmenter

        for name, folder in exports.items():
            onnx_segmenter = OnnxSegmenter.from_pretrained(folder, batch_size=1)
            variants[name] = lambda s=onnx_segmenter: s.segment(images, PROMPTS)
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
    ratios = f"speedup_vs_naive={speedup:.2f} floor_ratio={floor_ratio:.2f}"
    print_limits(config, pixel_values[0].shape[-1], medians)
    if exports:
        ratios += " " + onnx_ratios(medians, exports, Path(scratch.name), args.repeats)
    print(ratios)
    scratch.cleanup()
    return 0


def print_limits(config: CLIPSegConfig, size: int, medians: dict[str, float]) -> None:
    """The vision pass's FLOPs, its time at this CPU's peak per number format, each row against its limit."""
    flops = vision_flops(config, size)
    peaks, how = cpu_peaks()
    limits = {kind: flops / peak for kind, peak in peaks.items()}
    print(f"vision pass: {flops / 1e9:.1f} GFLOP ({max(config.extract_layers) + 1} of "
          f"{config.vision_config.num_hidden_layers} layers at {size} px); peak = {how}")
    print("  time at peak: " + ", ".join(f"{kind} {1000 * limit:.1f} ms" for kind, limit in limits.items()))
    for name, seconds in medians.items():
        kind = row_kind(name)
        print(f"  {name:<30} {seconds / limits[kind]:7.1f} x its {kind} limit")


def onnx_ratios(medians: dict[str, float], exports: dict[str, Path], scratch: Path, repeats: int) -> str:
    """ORT against the package path, and the cold starts (interleaved, medians)."""
    photo = scratch / "photo.png"
    load_images(1)[0].save(photo)
    sources = {"torch": (scratch / "checkpoint", "torch"), "onnx": (exports["onnx fp32 batch 1"], "onnx")}
    starts: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(max(repeats - 1, 1)):
        for name, (folder, backend) in sources.items():
            starts[name].append(cold_start(folder, photo, backend, scratch / f"masks-{name}"))
    cold = {name: statistics.median(values) for name, values in starts.items()}
    print(f"cold start (fresh predict process, 1 photo, {len(PROMPTS)} prompts): torch {cold['torch']:.2f} s, "
          f"onnx fp32 {cold['onnx']:.2f} s")
    package = medians["package batch 1"]
    if "package batch 1 + int8" in medians:
        print(f"onnx int8 vs package + int8: x{medians['package batch 1 + int8'] / medians['onnx int8 batch 1']:.2f}")
    return (f"onnx_fp32_vs_package={package / medians['onnx fp32 batch 1']:.2f} "
            f"onnx_int8_vs_package={package / medians['onnx int8 batch 1']:.2f} "
            f"cold_start_onnx_vs_torch={cold['onnx'] / cold['torch']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
