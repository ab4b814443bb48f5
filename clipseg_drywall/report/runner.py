"""The report's work on the batch pipeline (`clipseg_drywall.pipeline`): each photo segmented under every
prompt, its masks, overlays and thumbnails written and each mask measured (in the pipeline's write threads),
and one journal entry per photo, in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .. import distributed, pipeline
from ..atomic_files import remove_temporaries, save_image
from ..naming import claim_stem, prompt_slugs
from ..pipeline import Done, PipelineOptions, Work, batches_of, deal
from ..predict import image_files, save_overlay, write_mask
from .findings import is_crack_prompt
from .folder import MASKS_DIR
from .journal import Journal, file_sha256, journal_path, read_journals
from .measurements import DEFAULT_MIN_REGION_PX, measure
from .page import THUMBS_DIR, thumbnail_name

THUMBNAIL_SIDE = 240


@dataclass
class Photo:
    name: str  # the path as found (or the input that gave no photo); the journal's key
    path: Path | None
    skip_reason: str | None = None


def photo_list(inputs: Sequence[str]) -> list[Photo]:
    """Every photo in a fixed order, with the reason now known for one that will be skipped (a missing input,
    a file stem another photo already has)."""
    files, failures = image_files(inputs)
    stems: dict[str, str] = {}
    photos = [Photo(str(path), path, claim_stem(path, stems)) for path in files]
    return photos + [Photo(name, None, why) for name, why in failures]


def measure_photo(output: Path, photo: Photo, image: Image.Image, masks: dict, slugs: dict[str, str],
                  min_region_px: int = DEFAULT_MIN_REGION_PX) -> dict:
    """Write one photo's masks, overlays and thumbnails; its journal entry (numbers and file names only)."""
    findings = {}
    for prompt, mask in masks.items():
        mask_file, _ = write_mask(output / MASKS_DIR, photo.path, image, prompt, mask, slugs, write_overlay=False)
        overlay_file, shown = save_overlay(image, mask, mask_file)
        overlay_name = f"{MASKS_DIR}/{overlay_file.name}"
        # from the overlay in memory, a box reduction first (reducing_gap 1): 1.1 ms, where decoding the
        # overlay's JPEG again and Pillow's default gap took 3.4
        shown.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), reducing_gap=1.0)
        save_image(shown, output / thumbnail_name(overlay_name), quality=85)
        found = measure(mask, is_crack_prompt(prompt), min_region_px).as_dict()
        findings[prompt] = {**found, "mask": f"{MASKS_DIR}/{mask_file.name}", "overlay": overlay_name,
                            "mask_sha256": file_sha256(mask_file)}
    return {"photo": photo.name, "status": "ok", "size": list(image.size), "findings": findings}


def run_report(segmenter, photos: Sequence[Photo], prompts: Sequence[str], output: Path,
               options: PipelineOptions | None = None, min_region_px: int = DEFAULT_MIN_REGION_PX) -> dict[str, dict]:
    """Segment and measure every photo no journal holds yet; returns {photo: journal entry} of the whole run.

    The batch pipeline (`clipseg_drywall.pipeline`) does the work: under `accelerate launch` process N takes
    batches N, N + size, ... of the fixed photo order (so a photo meets the same batch-mates, and numerics,
    however many processes run and whether the run resumed) and journals in its own file; the main process
    reads them all once every process is done. `options`: the pipeline's workers and threads (default: fitted
    to the device); `min_region_px`: the speck filter the masks are measured with."""
    rank, size = distributed.world()
    if distributed.is_main_process():
        for folder in (output / MASKS_DIR, output / THUMBS_DIR):
            folder.mkdir(exist_ok=True)
            remove_temporaries(folder)  # of writes a kill interrupted
        read_journals(output)  # repairs a line a kill cut short, before any process reads
    distributed.wait_for_everyone()
    done = read_journals(output)
    slugs = prompt_slugs(prompts)
    options = (options or PipelineOptions()).resolved(str(getattr(segmenter, "device", "cpu")),
                                                      distributed.cpu_threads_per_process(), segmenter.backend,
                                                      heavy_writes=True)
    mine = [photos[i].name for i in batches_of(len(photos), segmenter.batch_size, rank, size)]
    works = (Work(photo.name, photo.path, skip=photo.skip_reason, pending=photo.name not in done) for photo in photos)

    def finish(result: Done) -> dict:  # in a write thread
        if result.error is not None:
            return {"photo": result.work.name, "status": "skipped", "reason": result.error}
        return measure_photo(output, Photo(result.work.name, result.work.path), result.image, result.masks, slugs,
                             min_region_px)

    with Journal(journal_path(output, rank)).appending() as append, \
            tqdm(total=len(mine), initial=sum(name in done for name in mine), unit="photo",
                 desc="report" if size == 1 else f"report ({rank + 1}/{size})") as progress:
        batches = (batch for _, batch in deal(works, segmenter.batch_size, rank, size))
        for batch in pipeline.run(segmenter, batches, prompts, finish, keep_images=True, options=options):
            entries = [entry for _, entry in batch.results]
            append(entries)
            done.update((entry["photo"], entry) for entry in entries)
            progress.update(len(entries))
    distributed.wait_for_everyone()
    return read_journals(output) if size > 1 else done
