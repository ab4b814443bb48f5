"""The report's work loop: each photo segmented under every prompt, its masks, overlays and thumbnails
written, each mask measured, and one journal entry per photo.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .. import distributed
from ..atomic_files import save_image
from ..naming import claim_stem, prompt_slugs
from ..predict import image_files, loaded_images, write_mask
from .findings import is_crack_prompt
from .folder import MASKS_DIR
from .journal import Journal, file_sha256, journal_path, read_journals
from .measurements import measure
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


def measure_photo(output: Path, photo: Photo, image: Image.Image, masks: dict, slugs: dict[str, str]) -> dict:
    """Write one photo's masks, overlays and thumbnails; its journal entry (numbers and file names only)."""
    findings = {}
    for prompt, mask in masks.items():
        mask_file, overlay_file = write_mask(output / MASKS_DIR, photo.path, image, prompt, mask, slugs)
        overlay_name = f"{MASKS_DIR}/{overlay_file.name}"
        with Image.open(overlay_file) as thumbnail:
            thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            save_image(thumbnail, output / thumbnail_name(overlay_name), quality=85)
        found = measure(mask, crack=is_crack_prompt(prompt)).as_dict()
        findings[prompt] = {**found, "mask": f"{MASKS_DIR}/{mask_file.name}", "overlay": overlay_name,
                            "mask_sha256": file_sha256(mask_file)}
    return {"photo": photo.name, "status": "ok", "size": list(image.size), "findings": findings}


def segment_chunk(segmenter, chunk: Sequence[Photo], prompts: Sequence[str], output: Path,
                  slugs: dict[str, str], done: dict[str, dict]) -> Iterator[dict]:
    """Journal entries of the photos of `chunk` not `done`. The whole chunk is segmented, so that a photo is
    always in the same batch, with the same numerics, whether the run was interrupted or not."""
    readable, failures = [], []
    candidates = [photo for photo in chunk if photo.skip_reason is None]
    for photo, (_, image) in zip(candidates, loaded_images([photo.path for photo in candidates], failures)):
        if image is None:
            photo.skip_reason = failures[-1][1]
        else:
            readable.append((photo, image))
    results = segmenter.iter_segment([image for _, image in readable], prompts) if readable else []
    measured = {photo.name: measure_photo(output, photo, image, result.masks, slugs)
                for (photo, image), result in zip(readable, results) if photo.name not in done}
    for photo in chunk:
        if photo.name not in done:
            yield measured.get(photo.name) or {"photo": photo.name, "status": "skipped", "reason": photo.skip_reason}


def run_report(segmenter, photos: Sequence[Photo], prompts: Sequence[str], output: Path) -> dict[str, dict]:
    """Segment and measure every photo no journal holds yet; returns {photo: journal entry} of the whole run.

    Under `accelerate launch` process N takes every N-th batch (the batches keep their fixed positions, so a
    photo meets the same numerics however many processes run) and journals in its own file; the main
    process reads them all once every process is done."""
    rank, size = distributed.world()
    if distributed.is_main_process():
        (output / MASKS_DIR).mkdir(exist_ok=True)
        (output / THUMBS_DIR).mkdir(exist_ok=True)
        read_journals(output)  # repairs a line a kill cut short, before any process reads
    distributed.wait_for_everyone()
    done = read_journals(output)
    slugs = prompt_slugs(prompts)
    starts = range(rank * segmenter.batch_size, len(photos), size * segmenter.batch_size)
    mine = {photo.name for start in starts for photo in photos[start:start + segmenter.batch_size]}
    with Journal(journal_path(output, rank)).appending() as append, \
            tqdm(total=len(mine), initial=len(mine & done.keys()), unit="photo",
                 desc="report" if size == 1 else f"report ({rank + 1}/{size})") as progress:
        for start in starts:
            chunk = photos[start:start + segmenter.batch_size]
            if all(photo.name in done for photo in chunk):
                continue
            for entry in segment_chunk(segmenter, chunk, prompts, output, slugs, done):
                append(entry)
                done[entry["photo"]] = entry
                progress.update(1)
    distributed.wait_for_everyone()
    return read_journals(output) if size > 1 else done
