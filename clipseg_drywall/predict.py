"""`python -m clipseg_drywall.predict --model PATH_OR_HUB_ID --prompt "segment crack" --output DIR IMAGE_OR_DIR ...`

Writes DIR/<image stem>__<prompt slug>.png (single-channel, {0,255}, the input's size) per image
and prompt; `--overlay` adds DIR/<image stem>__<prompt slug>_overlay.jpg. An input that fails
(unreadable file, folder without images) is reported at the end and the exit status is 1;
the other images are still segmented.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .cli import ArgumentParser
from .images import IMAGE_SUFFIXES, ImageLoadError, load_image
from .inference import SPEED_OPTIONS, Segmenter, mask_file_name, prompt_slug

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


def _loaded(files: Sequence[Path], failures: list[tuple[str, str]]) -> Iterator[tuple[Path, Image.Image | None]]:
    """(path, image), or (path, None) for a file that failed (recorded in `failures`)."""
    for path in files:
        try:
            yield path, load_image(path)
        except ImageLoadError as error:
            failures.append((str(path), str(error).removeprefix(f"{path}: ")))
            yield path, None


def predict(
    segmenter: Segmenter,
    inputs: Sequence[str | Path],
    prompts: Sequence[str],
    output: Path,
    threshold: float | None = None,
    write_overlay: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Segment every image of `inputs` under every prompt; returns (written files, failures)."""
    for prompt in prompts:
        prompt_slug(prompt)  # an unnameable prompt fails before any work
    files, failures = image_files(inputs)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems: dict[str, Path] = {}
    images = _loaded(files, failures)
    with tqdm(total=len(files), desc="segmenting", unit="image") as progress:
        while chunk := [item for _, item in zip(range(segmenter.batch_size), images)]:
            kept = []
            for path, image in chunk:
                if image is None:
                    continue
                if path.stem in stems:  # same stem from another folder: its masks would be overwritten
                    failures.append((str(path), f"same file name stem as {stems[path.stem]}; rename one of them"))
                else:
                    stems[path.stem] = path
                    kept.append((path, image))
            results = segmenter.iter_segment([image for _, image in kept], prompts, threshold) if kept else []
            for (path, image), result in zip(kept, results):
                for prompt, mask in result.masks.items():
                    target = output / mask_file_name(path, prompt)
                    Image.fromarray(mask, mode="L").save(target)
                    written.append(target)
                    if write_overlay:
                        target = target.with_name(target.stem + "_overlay.jpg")
                        overlay(image, mask).save(target, quality=90)
                        written.append(target)
            progress.update(len(chunk))
    return written, failures


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    parser.add_argument("--prompt", action="append", required=True, help="a text prompt (repeatable)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the mask PNGs")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the model config's)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per vision pass")
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--speed", action="append", default=[], choices=SPEED_OPTIONS,
                        help="opt-in CPU speed-up (repeatable); see README 'Performance' for each one's effect")
    parser.add_argument("--overlay", action="store_true", help="also write each mask over its image as a JPEG")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for prompt in args.prompt:
        if not prompt.strip() or not any(c.isalnum() for c in prompt):
            parser.error(f"--prompt {prompt!r} is empty; give a text such as 'segment crack'")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        parser.error(f"--threshold must be in (0, 1), got {args.threshold}")
    segmenter = Segmenter.from_pretrained(args.model, threshold=args.threshold, batch_size=args.batch_size,
                                          device=args.device, speed_options=args.speed)
    written, failures = predict(segmenter, args.inputs, args.prompt, args.output, write_overlay=args.overlay)
    print(f"wrote {len(written)} files to {args.output} (threshold {segmenter.threshold})")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for name, why in failures:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
