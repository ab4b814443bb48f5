"""`python -m clipseg_drywall.predict --model PATH_OR_HUB_ID --prompt "segment crack" --output DIR IMAGE_OR_DIR ...`

Writes DIR/<image stem>__<prompt slug>.png (single-channel, {0,255}, the input's size) per image
and prompt, and DIR/index.csv saying which image and prompt each file holds (merged with earlier
calls into the same folder). Any non-empty prompt gets a file name; two prompts never share one
(the naming rule: `clipseg_drywall/naming.py`). `--overlay` adds <image stem>__<prompt slug>_overlay.jpg.
Prompts longer than the text encoder reads (77 CLIP tokens) are truncated, with a warning.

A re-run into the same folder resumes: a (photo, prompt) pair whose mask index.csv says this model
(a fingerprint of its files), threshold and backend wrote is skipped, and the log says how many; a mask
from another model, threshold or backend is redone (and index.csv says what wrote each mask);
`--overwrite` redoes everything. `accelerate launch -m clipseg_drywall.predict ...` deals the photos out
to its processes (each on its own GPU, or its share of the CPU cores); they write the same files one
process would. `--input_list FILE` takes one path per line; folders are walked lazily.

Mistakes in the call (no readable input at all, an output path that is a file or not writable, a
model folder that does not exist) are one `error:` line and exit status 2, before the model loads.
An input that fails on its own (unreadable file, folder without images) is reported at the end
with exit status 1; the other images are still segmented. Every file is written atomically.
`--backend onnx` runs an exported model (`python -m clipseg_drywall.segmenters.export`) without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from . import distributed
from .atomic_files import check_writable_folder, remove_temporaries, save_image, save_mask
from .cli import ArgumentParser, check_model_source, user_errors
from .fingerprint import model_fingerprint
from .images import IMAGE_SUFFIXES
from .mask_index import JOURNAL_STEM, fold_journals, read_index
from .naming import avoid_taken_names, claim_stem, mask_file_name, prompt_slugs
from .pipeline import Done, Journal, PipelineOptions, Work, check_options, deal, journal_file, share_size
from .pipeline import run as pipeline_run
from .prompts import check_prompt
from .segmenters import BACKENDS, load_segmenter
from .segmenters.base import SPEED_OPTIONS, BatchedSegmenter, check_threshold

OVERLAY_COLOUR = (255, 0, 0)
OVERLAY_ALPHA = 0.5


def image_files(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files in order, [(input, why it gave none)]): `iter_image_files` as a list."""
    failures: list[tuple[str, str]] = []
    return list(iter_image_files(inputs, failures)), failures


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The mask painted over the image in translucent red, as a new image."""
    if not np.any(mask):  # nothing to paint: the pixels compositing gives, 2 ms sooner (common under a 2nd prompt)
        return image.copy()
    colour = Image.new("RGB", image.size, OVERLAY_COLOUR)
    alpha = Image.fromarray((mask > 0).astype(np.uint8) * int(255 * OVERLAY_ALPHA), mode="L")
    return Image.composite(colour, image, alpha)


@dataclass
class PredictResult:
    """What one process of a predict call did."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0  # (photo, prompt) pairs already done by this model, threshold and backend
    redone: int = 0  # pairs whose mask another model, threshold or backend had written


def iter_image_files(inputs: Sequence[str | Path], failures: list[tuple[str, str]],
                     input_list: Path | None = None) -> Iterator[Path]:
    """The image files of `inputs` and of `input_list` (one path per line), folders walked lazily (sorted,
    not recursive): only one folder's names are held at a time. Inputs that give no image go to `failures`."""
    for entry in map(Path, inputs):
        yield from _entry_files(entry, str(entry), failures)
    if input_list is not None:
        with open(input_list, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                name = line.rstrip("\r\n")
                if not name.strip():
                    failures.append((f"{input_list} line {number}", "empty line"))
                    continue
                yield from _entry_files(Path(name), name, failures)


def _entry_files(entry: Path, shown: str, failures: list[tuple[str, str]]) -> Iterator[Path]:
    if entry.is_dir():
        names = sorted(item.name for item in os.scandir(entry)
                       if item.is_file() and Path(item.name).suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            failures.append((shown, f"folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
        yield from (entry / name for name in names)
    elif entry.is_file():
        yield entry
    else:
        failures.append((shown, "no such file or folder"))


def predict(
    segmenter: BatchedSegmenter,
    inputs: Sequence[str | Path],
    prompts: Sequence[str],
    output: Path,
    threshold: float | None = None,
    write_overlay: bool = False,
    input_list: Path | None = None,
    model_id: str = "",
    overwrite: bool = False,
    options: PipelineOptions | None = None,
) -> PredictResult:
    """Segment every image of `inputs` (and `input_list`) under every prompt, with any backend's segmenter,
    through the batch pipeline (`clipseg_drywall.pipeline`: its dealing rule, its journal, `options` for its
    workers and threads, default: fitted to the device).

    Under `accelerate launch` each process takes its batches and journals its rows, which the main process
    folds into `output/index.csv` at the end (and at the start, for a run that was killed). A (photo, prompt)
    pair whose mask the index says was written by the same model (`model_id`, a fingerprint), threshold and
    backend is skipped unless `overwrite`; a mask from another one is redone, never kept."""
    prompts = list(dict.fromkeys(prompts))
    output = Path(output)
    rank, size = distributed.world()
    if distributed.is_main_process():
        output.mkdir(parents=True, exist_ok=True)
        remove_temporaries(output)  # of writes a kill interrupted
        fold_journals(output)  # rows of a run that was killed before it could fold them in
    distributed.wait_for_everyone()
    index = read_index(output)
    slugs = avoid_taken_names(prompt_slugs(prompts), index)
    provenance = {"model": model_id, "threshold": repr(segmenter.threshold if threshold is None else float(threshold)),
                  "backend": segmenter.backend}
    options = (options or PipelineOptions()).resolved(str(getattr(segmenter, "device", "cpu")),
                                                      distributed.cpu_threads_per_process(), segmenter.backend)
    result = PredictResult()

    def plan(batch: list[Work]) -> list[Work]:  # this process's batches only: what is left to do
        for work in batch:
            if work.skip is None:
                work.data = _pending_prompts(work.path, prompts, slugs, index, provenance, output, write_overlay,
                                             overwrite, result)
                work.pending = bool(work.data)
        return batch

    def finish(done: Done) -> dict | str:  # in a write thread: the journal entry, or why the photo failed
        if done.error is not None:
            return done.error
        return {"photo": done.work.name,
                "rows": [_write(output, done.work.path, done.image, prompt, done.masks[prompt], slugs, write_overlay)
                         | provenance for prompt in done.work.data]}

    n_files = sum(1 for _ in iter_image_files(inputs, [], input_list))
    batches = (plan(batch) for _, batch in
               deal(_walk(inputs, input_list, result.failures), segmenter.batch_size, rank, size))
    try:
        with Journal(journal_file(output, rank, JOURNAL_STEM)).appending() as append, \
                tqdm(total=share_size(n_files, segmenter.batch_size, rank, size),
                     desc="segmenting" if size == 1 else f"segmenting ({rank + 1}/{size})", unit="image") as progress:
            for batch in pipeline_run(segmenter, batches, prompts, finish, threshold=threshold,
                                      keep_images=write_overlay, options=options):
                entries = []
                for work, entry in batch.results:
                    if isinstance(entry, str):
                        result.failures.append((work.name, entry))
                        continue
                    entries.append(entry)
                    for row in entry["rows"]:
                        result.written.extend(output / name for name in (row["mask"], row["overlay"]) if name)
                append(entries)
                progress.update(batch.size)
    finally:  # what was written stays listed, even when a later image stops the call
        if size == 1:
            fold_journals(output)
    distributed.wait_for_everyone()
    if size > 1 and distributed.is_main_process():
        fold_journals(output)
    return result


def _walk(inputs: Sequence[str | Path], input_list: Path | None, failures: list[tuple[str, str]]) -> Iterator[Work]:
    """Stage 1: every image file in input order, a later one with a stem already seen refused (every process
    walks them all, so the one that owns it refuses it as one process would)."""
    stems: dict[str, str] = {}
    for path in iter_image_files(inputs, failures, input_list):
        yield Work(str(path), path, skip=claim_stem(path, stems))


def _pending_prompts(path: Path, prompts: list[str], slugs: dict[str, str], index: dict[str, dict[str, str]],
                     provenance: dict[str, str], output: Path, write_overlay: bool, overwrite: bool,
                     result: PredictResult) -> list[str]:
    """The prompts of `path` still to do (counted in `result` as skipped or redone)."""
    todo = []
    for prompt in prompts:
        row = index.get(mask_file_name(path, prompt, slugs))
        state = _done_state(row, path, prompt, provenance, output, write_overlay)
        if state == "done" and not overwrite:
            result.skipped += 1
            continue
        result.redone += state == "other"
        todo.append(prompt)
    return todo


def _done_state(row: dict[str, str] | None, path: Path, prompt: str, provenance: dict[str, str], output: Path,
                write_overlay: bool) -> str:
    """"done" (this image and prompt, by this model, threshold and backend, files present), "other" (by
    another model, threshold or backend) or "new"."""
    if row is None or row["image"] != str(path) or row["prompt"] != prompt or not (output / row["mask"]).is_file():
        return "new"
    if any(row.get(key) != value for key, value in provenance.items()):
        return "other"
    if write_overlay and not (row.get("overlay") and (output / row["overlay"]).is_file()):
        return "new"
    return "done"


def _write(output: Path, path: Path, image: Image.Image | None, prompt: str, mask: np.ndarray,
           slugs: dict[str, str], write_overlay: bool) -> dict[str, str]:
    target, overlay_file = write_mask(output, path, image, prompt, mask, slugs, write_overlay)
    return {"image": str(path), "prompt": prompt, "mask": target.name, "overlay": overlay_file.name if overlay_file else ""}


def write_mask(output: Path, path: Path, image: Image.Image | None, prompt: str, mask: np.ndarray,
               slugs: dict[str, str], write_overlay: bool = True) -> tuple[Path, Path | None]:
    """`output/<image stem>__<prompt slug>.png` and, with `write_overlay`, the mask over the image as
    `..._overlay.jpg` beside it, both atomically: (mask file, overlay file or None)."""
    target = save_mask(mask, output / mask_file_name(path, prompt, slugs))
    if not write_overlay:
        return target, None
    return target, save_overlay(image, mask, target)[0]


def save_overlay(image: Image.Image, mask: np.ndarray, mask_file: Path) -> tuple[Path, Image.Image]:
    """The mask over the image, saved atomically beside `mask_file` as `<mask stem>_overlay.jpg`:
    (its path, the overlay image)."""
    shown = overlay(image, mask)
    return save_image(shown, mask_file.with_name(mask_file.stem + "_overlay.jpg"), quality=90), shown


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.predict", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--input_list", type=Path, help="a text file of image files and/or folders, one per line")
    parser.add_argument("--prompt", action="append", required=True, help="a text prompt (repeatable)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the mask PNGs and index.csv")
    add_segmenter_arguments(parser)
    parser.add_argument("--overlay", action="store_true", help="also write each mask over its image as a JPEG")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every (photo, prompt) pair, also those the folder already holds from this model "
                             "and threshold (by default they are skipped: a re-run resumes)")
    return parser


def add_segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and run the segmenter (predict and the report share them)."""
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (an export folder with --backend onnx)")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the model config's)")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="images per vision pass (default 8: right for a CPU; on a GPU use 32-64 in fp32 and "
                             "64-128 with --speed bf16, as memory allows: each photo needs its decoded pixels and "
                             "native-size masks on the device)")
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="torch (default) or onnx: an exported model on onnxruntime, without torch")
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--speed", action="append", default=[], choices=SPEED_OPTIONS,
                        help="opt-in CPU speed-up of the torch backend (repeatable); see docs/benchmarks.md)")
    parser.add_argument("--num_workers", type=int,
                        help="processes that decode and preprocess photos (default: on cuda, from this process's "
                             "cores; on a CPU device, and with --backend onnx, 0: decoding in the main process, "
                             "since the model's threads have the cores)")
    parser.add_argument("--write_threads", type=int,
                        help="threads that encode and write the files (default: on cuda a quarter of the cores, "
                             "half for the report, at least 2; on a CPU device 2)")


def pipeline_options(args: argparse.Namespace) -> PipelineOptions:
    """The pipeline options the flags give (unset ones fitted to the device when the run starts)."""
    return PipelineOptions(num_workers=getattr(args, "num_workers", None),
                           write_threads=getattr(args, "write_threads", None))


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no model, so that a mistake stops the call before the model loads."""
    for prompt in args.prompt:
        check_prompt(prompt, "--prompt")
    if args.threshold is not None:
        check_threshold(args.threshold)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    check_options(getattr(args, "num_workers", None), getattr(args, "write_threads", None))
    if not args.inputs and getattr(args, "input_list", None) is None:
        raise ValueError("no input: give image files or folders, or --input_list FILE")
    if getattr(args, "input_list", None) is not None and not args.input_list.is_file():
        raise FileNotFoundError(f"--input_list {args.input_list}: no such file")
    failures: list[tuple[str, str]] = []
    if next(iter_image_files(args.inputs, failures, getattr(args, "input_list", None)), None) is None:
        # with some images left, the failed inputs are reported at the end instead
        raise FileNotFoundError("nothing to segment: " + "; ".join(f"{name}: {why}" for name, why in failures))
    check_writable_folder(args.output, "--output")
    check_model_source(args.model, "--model")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: whole batches are journaled, the rest is redone by a rerun
        print("stopped: what finished is journaled; run the same command again to go on", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    with user_errors(argv):
        args = _parser().parse_args(argv)
        check_arguments(args)
        segmenter = load_segmenter(args.model, args.backend, threshold=args.threshold, batch_size=args.batch_size,
                                   device=args.device or distributed.launched_device(), speed_options=args.speed,
                                   num_threads=distributed.cpu_threads_per_process())
        result = predict(segmenter, args.inputs, args.prompt, args.output, write_overlay=args.overlay,
                         input_list=args.input_list, model_id=model_fingerprint(args.model), overwrite=args.overwrite,
                         options=pipeline_options(args))
    rank, size = distributed.world()
    who = "" if size == 1 else f"process {rank + 1}/{size}: "
    print(f"{who}wrote {len(result.written)} files to {args.output} (threshold {segmenter.threshold}); skipped "
          f"{result.skipped} (photo, prompt) pairs already done by this model and threshold; redid {result.redone} "
          f"written by another model, threshold or backend" + ("; index.csv lists them all" if rank == 0 else ""))
    if result.failures:
        print(f"{who}{len(result.failures)} input(s) failed:", file=sys.stderr)
        for name, why in result.failures:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
