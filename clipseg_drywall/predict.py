"""`python -m clipseg_drywall.predict --model PATH_OR_HUB_ID --prompt "segment crack" --output DIR IMAGE_OR_DIR ...`

Writes DIR/<image stem>__<prompt slug>.png (single-channel, {0,255}, the input's size) per image
and prompt, and DIR/index.csv saying which image and prompt each file holds (merged with earlier
calls into the same folder). Any non-empty prompt gets a file name; two prompts never share one
(the naming rule: `clipseg_drywall/outputs.py`). `--overlay` adds <image stem>__<prompt slug>_overlay.jpg.
Prompts longer than the text encoder reads (77 CLIP tokens) are truncated, with a warning.

Mistakes in the call (no readable input at all, an output path that is a file or not writable, a
model folder that does not exist) are one `error:` line and exit status 2, before the model loads.
An input that fails on its own (unreadable file, folder without images) is reported at the end
with exit status 1; the other images are still segmented. Every file is written atomically.
`--backend onnx` runs an exported model (`python -m clipseg_drywall.export`) without torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .backends import BACKENDS, load_segmenter
from .cli import ArgumentParser, check_model_source, user_errors
from .images import IMAGE_SUFFIXES, ImageLoadError, load_image
from .outputs import (
    avoid_taken_names,
    check_writable_folder,
    claim_stem,
    mask_file_name,
    prompt_slugs,
    read_index,
    save_image,
    save_mask,
    update_index,
)
from .segmenter import SPEED_OPTIONS, BatchedSegmenter, check_prompt, check_threshold

OVERLAY_COLOUR = (255, 0, 0)
OVERLAY_ALPHA = 0.5


def image_files(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files in order, [(input, why it gave none)]): folders expand to their images (not recursive)."""
    files, failures = [], []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((str(entry), f"folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        else:
            failures.append((str(entry), "no such file or folder"))
    return files, failures


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The mask painted over the image in translucent red."""
    colour = Image.new("RGB", image.size, OVERLAY_COLOUR)
    alpha = Image.fromarray((mask > 0).astype(np.uint8) * int(255 * OVERLAY_ALPHA), mode="L")
    return Image.composite(colour, image, alpha)


def loaded_images(files: Sequence[Path], failures: list[tuple[str, str]]) -> Iterator[tuple[Path, Image.Image | None]]:
    """(path, image), or (path, None) for a file that failed (recorded in `failures`)."""
    for path in files:
        try:
            yield path, load_image(path)
        except ImageLoadError as error:
            failures.append((str(path), str(error).removeprefix(f"{path}: ")))
            yield path, None


def predict(
    segmenter: BatchedSegmenter,
    inputs: Sequence[str | Path],
    prompts: Sequence[str],
    output: Path,
    threshold: float | None = None,
    write_overlay: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Segment every image of `inputs` under every prompt (any backend's segmenter); returns
    (written files, failures). `output/index.csv` lists what was written."""
    prompts = list(dict.fromkeys(prompts))
    output = Path(output)
    slugs = avoid_taken_names(prompt_slugs(prompts), read_index(output))
    files, failures = image_files(inputs)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index: list[dict[str, str]] = []
    stems: dict[str, str] = {}
    images = loaded_images(files, failures)
    try:
        with tqdm(total=len(files), desc="segmenting", unit="image") as progress:
            while chunk := [item for _, item in zip(range(segmenter.batch_size), images)]:
                kept = []
                for path, image in chunk:
                    if image is None:
                        continue
                    if clash := claim_stem(path, stems):  # same stem from another folder
                        failures.append((str(path), clash))
                    else:
                        kept.append((path, image))
                results = segmenter.iter_segment([image for _, image in kept], prompts, threshold) if kept else []
                for (path, image), result in zip(kept, results):
                    for prompt, mask in result.masks.items():
                        index.append(_write(output, path, image, prompt, mask, slugs, write_overlay, written))
                progress.update(len(chunk))
    finally:  # what was written stays listed, even when a later image stops the call
        if index:
            update_index(output, index)
    return written, failures


def _write(output: Path, path: Path, image: Image.Image, prompt: str, mask: np.ndarray,
           slugs: dict[str, str], write_overlay: bool, written: list[Path]) -> dict[str, str]:
    target, overlay_file = write_mask(output, path, image, prompt, mask, slugs, write_overlay)
    written.extend(name for name in (target, overlay_file) if name is not None)
    return {"image": str(path), "prompt": prompt, "mask": target.name, "overlay": overlay_file.name if overlay_file else ""}


def write_mask(output: Path, path: Path, image: Image.Image, prompt: str, mask: np.ndarray,
               slugs: dict[str, str], write_overlay: bool = True) -> tuple[Path, Path | None]:
    """`output/<image stem>__<prompt slug>.png` and, with `write_overlay`, the mask over the image as
    `..._overlay.jpg` beside it, both atomically: (mask file, overlay file or None)."""
    target = save_mask(mask, output / mask_file_name(path, prompt, slugs))
    if not write_overlay:
        return target, None
    return target, save_image(overlay(image, mask), target.with_name(target.stem + "_overlay.jpg"), quality=90)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.predict", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--prompt", action="append", required=True, help="a text prompt (repeatable)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the mask PNGs and index.csv")
    add_segmenter_arguments(parser)
    parser.add_argument("--overlay", action="store_true", help="also write each mask over its image as a JPEG")
    return parser


def add_segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and run the segmenter (predict and the report share them)."""
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (an export folder with --backend onnx)")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the model config's)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per vision pass")
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="torch (default) or onnx: an exported model on onnxruntime, without torch")
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--speed", action="append", default=[], choices=SPEED_OPTIONS,
                        help="opt-in CPU speed-up of the torch backend (repeatable); see README 'Performance'")


def check_call(args: argparse.Namespace) -> None:
    """Every check that needs no model, so that a mistake stops the call before the model loads."""
    for prompt in args.prompt:
        check_prompt(prompt, "--prompt")
    if args.threshold is not None:
        check_threshold(args.threshold)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    files, failures = image_files(args.inputs)
    if not files:  # with some images left, the failed inputs are reported at the end instead
        raise FileNotFoundError("nothing to segment: " + "; ".join(f"{name}: {why}" for name, why in failures))
    check_writable_folder(args.output, "--output")
    check_model_source(args.model, "--model")


def main(argv: list[str] | None = None) -> int:
    with user_errors(argv):
        args = _parser().parse_args(argv)
        check_call(args)
        segmenter = load_segmenter(args.model, args.backend, threshold=args.threshold, batch_size=args.batch_size,
                                   device=args.device, speed_options=args.speed)
        written, failures = predict(segmenter, args.inputs, args.prompt, args.output, write_overlay=args.overlay)
    print(f"wrote {len(written)} files and index.csv to {args.output} (threshold {segmenter.threshold})")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for name, why in failures:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
