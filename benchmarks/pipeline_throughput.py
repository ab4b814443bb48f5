"""Photos per second at each stage of a batch job, side by side in one run, the batch pipeline against
today's serial path (kept runnable here as the reference), with a tiny model and with the full-size one.

    python benchmarks/pipeline_throughput.py                    # CPU: tiny model, then the full-size config
    python benchmarks/pipeline_throughput.py --device cuda      # a GPU (add --speed bf16 for bf16 rows)

Stages, each on the same 640x640 JPEGs from ../shared/data (linked under new names when more are asked for)
with 2 prompts, at one batch size, after one warm-up batch, model load excluded:

  model alone   `_logits_from_pixels` on pixels prepared beforehand and already on the device: the vision
                pass and the decoder, nothing else (the ceiling)
  segmenter     `Segmenter.iter_segment` on images decoded beforehand: preprocessing, the model, the
                native-size masks, one thread
  serial        today's predict loop (`serial_predict` below, as `clipseg_drywall/predict.py` ran before the
                pipeline): read, decode, preprocess (the processor itself), model, upsample, PNG at Pillow's
                default level, index rows, one step after another in one thread
  cli           `python -m clipseg_drywall.predict` (its `main`, with the loaded model handed in and the
                fingerprint skipped): the batch pipeline with the defaults for the device
  report        `python -m clipseg_drywall.report` the same way: masks, overlays, thumbnails, measurements,
                findings and the page

Models: the tests' tiny random config (the work around the model dominates, as on a GPU) and the full-size
CIDAS config (`--config`, random weights: speed does not depend on the values). Each stage runs `--repeats`
times, interleaved with the others (the report `--report_repeats` times); the best of them (load from other
work on the machine only slows a stage down). Per model a ratio line; the last line is
`cli_vs_model_alone=<x> segmenter_vs_model_alone=<y> report_vs_cli=<z> overhead_vs_serial=<w>`, x, y and z
from the full-size config (photos/s over photos/s) and w from the tiny model: the non-model milliseconds per
photo (stage time minus model-alone time) of the cli over those of the serial path. The cli also checks it
wrote the masks the serial path wrote, pixel for pixel.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import SHARED  # noqa: E402
from benchmarks.predict_scaling import cpu_name  # noqa: E402

PROMPTS = ["segment crack", "segment taping area"]
TINY_CONFIG = {  # tests/conftest.py's tiny_config_dict
    "model_type": "clipseg", "architectures": ["CLIPSegForImageSegmentation"], "projection_dim": 32, "reduce_dim": 16,
    "extract_layers": [0, 1, 2], "conditional_layer": 0, "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32, "use_complex_transposed_convolution": True,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 77, "vocab_size": 49408, "pad_token_id": 1, "bos_token_id": 0,
                    "eos_token_id": 2},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                      "image_size": 224, "patch_size": 16},
}


# ---- today's serial path, the reference ----


def serial_predict(segmenter, files: list[Path], prompts: list[str], output: Path) -> None:
    """predict as it ran before the pipeline (one thread: chunk, decode, `iter_segment` with the processor's own
    preprocessing, PNG at Pillow's default level, the index shard appended and synced per batch, folded into
    index.csv at the end). The steps the package has made faster since are kept here as they were then (the
    processor, `reference_load_image`, `reference_threshold_masks`), so that the reference does not move."""
    from clipseg_drywall.segmenters import pytorch

    pixel_values = segmenter.preprocessor()
    fast, pixel_values.fast = pixel_values.fast, None
    threshold_masks, pytorch.threshold_masks = pytorch.threshold_masks, reference_threshold_masks
    try:
        _serial_predict(segmenter, files, prompts, output)
    finally:
        pixel_values.fast, pytorch.threshold_masks = fast, threshold_masks


def reference_load_image(path: Path) -> Image.Image:
    """`images.load_image` before the pipeline: EXIF applied by `exif_transpose`, which copies every photo."""
    from PIL import ImageOps

    from clipseg_drywall.images import read_image_file, to_rgb

    return to_rgb(ImageOps.exif_transpose(read_image_file(path)[0]))


def reference_threshold_masks(probabilities, threshold: float):
    """`threshold_masks` before the pipeline: three torch passes (now numpy on the CPU, the same masks)."""
    import torch

    return (probabilities > threshold).to(torch.uint8).mul_(255)


def _serial_predict(segmenter, files: list[Path], prompts: list[str], output: Path) -> None:
    from clipseg_drywall.atomic_files import save_image
    from clipseg_drywall.images import ImageLoadError
    from clipseg_drywall.mask_index import INDEX_COLUMNS, update_index
    from clipseg_drywall.naming import claim_stem, mask_file_name, prompt_slugs

    output.mkdir(parents=True, exist_ok=True)
    slugs, stems, index, rows = prompt_slugs(prompts), {}, {}, []
    with open(output / ".index-shard-0.csv", "w", newline="", encoding="utf-8") as handle:
        shard = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        shard.writeheader()
        for start in range(0, len(files), segmenter.batch_size):
            chunk = [path for path in files[start:start + segmenter.batch_size] if not claim_stem(path, stems)
                     and any(index.get(mask_file_name(path, p, slugs)) is None for p in prompts)]
            images = []
            for path in chunk:
                try:
                    images.append((path, reference_load_image(path)))
                except ImageLoadError:
                    continue
            batch_rows = []
            for (path, _), result in zip(images, segmenter.iter_segment([image for _, image in images], prompts)):
                for prompt in prompts:
                    target = save_image(Image.fromarray(result.masks[prompt], mode="L"),
                                        output / mask_file_name(path, prompt, slugs))
                    batch_rows.append({"image": str(path), "prompt": prompt, "mask": target.name, "overlay": "",
                                       "model": "", "threshold": repr(segmenter.threshold), "backend": "torch"})
            shard.writerows(batch_rows)
            handle.flush()
            os.fsync(handle.fileno())
            rows += batch_rows
    update_index(output, rows)
    (output / ".index-shard-0.csv").unlink()


# ---- set-up ----


def photo_files(folder: Path, count: int) -> list[Path]:
    """`count` 640x640 validation JPEGs in `folder`, linked under new names beyond the ones there are (photos of
    another size, e.g. the 256-px copies `../shared/tools/device-pack` carries to a GPU machine, are resized to
    640x640 first, JPEG quality 90)."""
    found = sorted((SHARED / "data" / "cracks" / "valid" / "images").glob("*.jpg"))
    if not found:
        raise SystemExit(f"no photos in {SHARED / 'data' / 'cracks' / 'valid' / 'images'} (../shared)")
    (folder.parent / "sources").mkdir(parents=True, exist_ok=True)
    sources = []
    for path in found:
        with Image.open(path) as image:
            if image.size == (640, 640):
                sources.append(path)
                continue
            sources.append(folder.parent / "sources" / path.name)
            image.convert("RGB").resize((640, 640), Image.Resampling.BICUBIC).save(sources[-1], quality=90)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        target = folder / f"photo{index:06d}.jpg"
        try:
            os.link(sources[index % len(sources)], target)
        except OSError:  # another filesystem (a tmpfs /tmp): a copy
            shutil.copyfile(sources[index % len(sources)], target)
        files.append(target)
    return files


def save_model(config: dict | Path, folder: Path) -> None:
    import torch
    from transformers import CLIPSegConfig, CLIPSegProcessor

    from clipseg_drywall.modeling import model_from_config

    torch.manual_seed(0)
    loaded = CLIPSegConfig(**config) if isinstance(config, dict) else CLIPSegConfig.from_pretrained(config)
    model_from_config(loaded).save_pretrained(folder)
    CLIPSegProcessor.from_pretrained(SHARED / "clipseg-rd64-refined").save_pretrained(folder)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(run: Callable[[], object], device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


# ---- the stages ----


def measure(name: str, model_dir: Path, files: list[Path], root: Path, args) -> dict[str, float]:
    """Seconds per photo of each stage for one model."""
    import torch

    from clipseg_drywall import distributed, predict
    from clipseg_drywall.images import load_image
    from clipseg_drywall.report import command as report
    from clipseg_drywall.segmenters import load_segmenter

    segmenter = load_segmenter(str(model_dir), "torch", threshold=0.5, batch_size=args.batch_size, device=args.device,
                               speed_options=args.speed, num_threads=distributed.cpu_threads_per_process())
    device = str(segmenter.device)
    images = [load_image(path) for path in files]
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    pixels = [segmenter.preprocessor()(batch).to(device, segmenter.model.dtype) for batch in batches]
    list(segmenter.iter_segment(images[:args.batch_size], PROMPTS))  # warm-up: prompts cached, kernels chosen

    def model_alone():
        with torch.inference_mode():
            for batch in pixels:
                segmenter._logits_from_pixels(batch, PROMPTS)

    def iter_segment():
        for _ in segmenter.iter_segment(images, PROMPTS):
            pass

    flags = ["--model", str(model_dir), *sum((["--prompt", p] for p in PROMPTS), []), "--threshold", "0.5",
             "--batch_size", str(args.batch_size)] + (["--device", args.device] if args.device else []) + \
        sum((["--speed", s] for s in args.speed), [])
    extra = (["--num_workers", str(args.num_workers)] if args.num_workers is not None else [])

    def cli(output: Path) -> Callable[[], object]:
        return lambda: predict.main([str(root / name / "photos"), "--output", str(output), *flags, *extra])

    def serial(output: Path) -> Callable[[], object]:
        return lambda: serial_predict(segmenter, files, PROMPTS, output)

    def report_run(output: Path) -> Callable[[], object]:
        return lambda: report.main([str(root / name / "photos"), "--output", str(output), *flags, *extra])

    # the CLIs get the loaded model (load time is not the pipeline's) and skip hashing the weights
    predict.load_segmenter = report.load_segmenter = lambda *a, **k: segmenter
    predict.model_fingerprint = report.model_fingerprint = lambda model: "benchmark"
    seconds: dict[str, list[float]] = {"model alone": [], "segmenter": [], "serial": [], "cli": [], "report": []}
    for repeat in range(args.repeats):  # interleaved, so that a busy spell on the machine hits every stage
        seconds["model alone"].append(timed(model_alone, device))
        seconds["segmenter"].append(timed(iter_segment, device))
        for stage, make in (("serial", serial), ("cli", cli), ("report", report_run)):
            if stage == "report" and repeat >= args.report_repeats:
                continue
            seconds[stage].append(timed(make(root / name / f"{stage}-{repeat}"), device))
            if repeat:
                shutil.rmtree(root / name / f"{stage}-{repeat}")
    same = all(np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(root / name / "cli-0" / path.name)))
               for path in sorted((root / name / "serial-0").glob("*.png")))
    # the best of the repeats: other work on the machine only ever slows a stage down
    per_photo = {stage: min(values) / len(files) for stage, values in seconds.items()}
    print(f"\n{name}: {len(files)} photos 640x640, {len(PROMPTS)} prompts, batch {args.batch_size}, device {device}"
          f"{', ' + '+'.join(args.speed) if args.speed else ''}; masks of cli == serial, pixel for pixel: {same}")
    print("| stage | photos/s | ms a photo |\n|---|---:|---:|")
    for stage, value in per_photo.items():
        print(f"| {stage} | {1 / value:.1f} | {1000 * value:.2f} |")
    return per_photo


def ratios(per_photo: dict[str, float]) -> dict[str, float]:
    model = per_photo["model alone"]
    return {"cli_vs_model_alone": model / per_photo["cli"], "segmenter_vs_model_alone": model / per_photo["segmenter"],
            "report_vs_cli": per_photo["cli"] / per_photo["report"],
            "overhead_vs_serial": (per_photo["cli"] - model) / (per_photo["serial"] - model),
            "cli_vs_serial": per_photo["serial"] / per_photo["cli"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda, or the CPU (default)")
    parser.add_argument("--speed", action="append", default=[], help="e.g. bf16 (opt-in, as predict's --speed)")
    parser.add_argument("--batch_size", type=int, help="default: 8 on the CPU, 32 on cuda")
    parser.add_argument("--tiny_photos", type=int, help="default: 128 on the CPU, 1024 on cuda")
    parser.add_argument("--full_photos", type=int, help="default: 16 on the CPU, 512 on cuda")
    parser.add_argument("--repeats", type=int, help="runs of each stage, interleaved (the best counts; default 5, 2 on cuda)")
    parser.add_argument("--report_repeats", type=int, default=1, help="runs of the report (the slowest stage)")
    parser.add_argument("--num_workers", type=int, help="the pipeline's decode workers (default: fitted to the device)")
    parser.add_argument("--config", type=Path, default=SHARED / "clipseg-rd64-refined")
    parser.add_argument("--only", choices=("tiny", "full"), help="one model only")
    args = parser.parse_args()
    if args.only != "tiny" and not (args.config / "config.json").is_file():  # before minutes of the tiny model
        parser.error(f"--config {args.config}: no config.json there; give a CLIPSeg model folder "
                     f"(default: ../shared/clipseg-rd64-refined)")
    cuda = (args.device or "").startswith("cuda")
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.repeats = args.repeats or (2 if cuda else 5)
    counts = {"tiny": args.tiny_photos or (1024 if cuda else 128), "full": args.full_photos or (512 if cuda else 16)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-throughput-") as scratch:
        root = Path(scratch)
        for name, config in (("tiny", TINY_CONFIG), ("full", args.config)):
            if args.only not in (None, name):
                continue
            save_model(config, root / name / "model")
            files = photo_files(root / name / "photos", counts[name])
            results[name] = ratios(measure(name, root / name / "model", files, root, args))
            shutil.rmtree(root / name)
    from clipseg_drywall import distributed

    print(f"\n{cpu_name()}; this process's cores: {distributed.cpu_threads_per_process()}")
    for name, values in results.items():
        print(f"[{name}] " + " ".join(f"{key}={value:.3f}" for key, value in values.items()))
    headline, tiny = results.get("full", results.get("tiny")), results.get("tiny", results.get("full"))
    print(f"cli_vs_model_alone={headline['cli_vs_model_alone']:.3f} "
          f"segmenter_vs_model_alone={headline['segmenter_vs_model_alone']:.3f} "
          f"report_vs_cli={headline['report_vs_cli']:.3f} overhead_vs_serial={tiny['overhead_vs_serial']:.3f}")


if __name__ == "__main__":
    main()
