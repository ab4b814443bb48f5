"""`clipseg-drywall-report PHOTOS... --model M --output REPORT_DIR`: an inspection report a site team can act on.

Segments every photo (files and folders, as `predict` reads them) under each prompt (default: the two
canonical prompts, "segment crack" and "segment taping area") with predict's threshold rule (the
model's calibrated one unless --threshold), measures each mask (`measurements`), flags what the
--flag rules say (default: coverage > 0.5 %), and writes into REPORT_DIR:

  index.html       one page that works offline: summary, coverage histograms, one row per photo, worst
                   first, sortable and filterable in the page
  findings.csv     one row per (photo, prompt): the punch-list import (findings.jsonl: the same rows)
  masks/           <photo stem>__<prompt slug>.png and ..._overlay.jpg, as predict names them
  thumbs/          the overlays' thumbnails the page shows
  run.json         the arguments and the model's fingerprint; journal.jsonl: one line per finished photo
                   (journal-N.jsonl: process N's, under accelerate launch)

`accelerate launch -m clipseg_drywall.report ...` splits the photos between its processes (GPUs, or
shares of the CPU cores); the findings are those of one process.

A run that stops (killed, power cut) goes on where it stopped when started again with the same
arguments, and ends with the same findings; different arguments into the same folder are refused,
naming what differs; --overwrite starts afresh. A photo that cannot be read is listed as skipped with
the reason. Lengths and widths are in pixels, or in mm with --mm_per_pixel (which also gives each
crack a severity band from its largest width). Mistakes in the call are one `error:` line and exit
status 2, before the model loads.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from . import distributed
from .backends import load_segmenter
from .cli import ArgumentParser, user_errors
from .findings import DEFAULT_FLAG_RULES, check_flag_rules, finding_row, is_crack_prompt, write_findings
from .measurements import SEVERITY_EDGES_MM, check_severity_edges, measure
from .outputs import atomic_path, claim_stem, model_fingerprint, prompt_slugs, save_image
from .predict import add_segmenter_arguments, image_files, loaded_images, write_mask
from .predict import check_call as check_segmentation_call
from .prompts import CANONICAL_PROMPTS
from .report_page import THUMBS_DIR, PageSummary, render_page, thumbnail_name

RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
MASKS_DIR = "masks"
PAGE_FILE = "index.html"
# What --overwrite removes: only what this command writes, never anything else in the folder.
OWN_FILES = (RUN_FILE, JOURNAL_FILE, PAGE_FILE, "findings.csv", "findings.jsonl")
JOURNAL_GLOB = "journal*.jsonl"  # journal.jsonl, and journal-N.jsonl of process N of a launched run
OWN_FOLDERS = (MASKS_DIR, THUMBS_DIR)
DEFAULT_PROMPTS = list(CANONICAL_PROMPTS.values())
THUMBNAIL_SIDE = 240
# The arguments a report folder is tied to, with the flag that sets each (named when they differ).
ARGUMENT_FLAGS = {"inputs": "PHOTOS", "model": "--model", "model_fingerprint": "--model (its files changed)",
                  "backend": "--backend", "prompts": "--prompt", "threshold": "--threshold",
                  "batch_size": "--batch_size", "device": "--device", "speed": "--speed",
                  "mm_per_pixel": "--mm_per_pixel", "flag": "--flag", "severity_bands": "--severity_bands"}


@dataclass
class Photo:
    name: str  # the path as found (or the input that gave no photo); the journal's key
    path: Path | None
    skip_reason: str | None = None


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="PHOTO_OR_DIR", help="photos and/or folders of photos")
    parser.add_argument("--output", required=True, type=Path, help="the report folder (REPORT_DIR)")
    parser.add_argument("--prompt", action="append",
                        help=f"a text prompt (repeatable; default: {' and '.join(map(repr, DEFAULT_PROMPTS))})")
    add_segmenter_arguments(parser)
    parser.add_argument("--mm_per_pixel", type=float,
                        help="the photos' scale: lengths and widths in mm, and a severity band per crack")
    parser.add_argument("--flag", action="append", metavar="RULE",
                        help="when a (photo, prompt) is flagged, '[PROMPT_OR_TASK:] METRIC >|>= VALUE[UNIT]', "
                             "METRIC: coverage (%%), regions, length, max_width, mean_width (px or mm); repeatable, "
                             f"any rule that holds flags (default: {' ; '.join(DEFAULT_FLAG_RULES).replace('%', '%%')})")
    parser.add_argument("--severity_bands", default=",".join(f"{edge:g}" for edge in SEVERITY_EDGES_MM),
                        metavar="MM,MM,MM", help="upper edges of hairline, fine and medium in mm; wider is wide "
                                                 "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in a folder that holds a report")
    return parser


def check_call(args: argparse.Namespace) -> dict:
    """Every check that needs no model; returns the arguments the report folder is tied to."""
    args.prompt = list(dict.fromkeys(args.prompt or DEFAULT_PROMPTS))
    check_segmentation_call(args)  # prompts, threshold, batch size, photos, output folder, model source
    if args.mm_per_pixel is not None and not args.mm_per_pixel > 0:
        raise ValueError(f"--mm_per_pixel must be positive, got {args.mm_per_pixel}")
    try:
        edges = tuple(float(edge) for edge in args.severity_bands.split(","))
    except ValueError:
        raise ValueError(f"--severity_bands {args.severity_bands!r}: give widths in mm, e.g. 0.1,0.3,0.7") from None
    check_severity_edges(edges)
    rules = [rule.text for rule in check_flag_rules(args.flag or DEFAULT_FLAG_RULES, args.mm_per_pixel)]
    return {"inputs": [str(Path(name).resolve()) for name in args.inputs], "model": args.model,
            "model_fingerprint": model_fingerprint(args.model), "backend": args.backend, "prompts": args.prompt,
            "threshold": args.threshold, "batch_size": args.batch_size, "device": args.device, "speed": args.speed,
            "mm_per_pixel": args.mm_per_pixel, "flag": rules, "severity_bands": list(edges)}


def differences(saved: dict, arguments: dict) -> list[str]:
    """'--flag: X then, Y now' for each argument that differs from the folder's run."""
    return [f"{flag}: {saved.get(key)!r} then, {arguments[key]!r} now" for key, flag in ARGUMENT_FLAGS.items()
            if saved.get(key) != arguments[key]]


def check_folder(output: Path, arguments: dict, overwrite: bool) -> bool:
    """Refuse a folder tied to other arguments, or holding report files without a run file (nothing is
    written or removed here); True when the run starts afresh, False when it goes on."""
    run_file = output / RUN_FILE
    if overwrite:
        return True
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))["arguments"]
        except (ValueError, KeyError):
            raise ValueError(f"--output {output}: {run_file} is not a report's run file; add --overwrite "
                             "to start afresh") from None
        if changed := differences(saved, arguments):
            raise ValueError(f"--output {output} holds a report made with other arguments ({'; '.join(changed)}): "
                             "run with the same arguments to go on, add --overwrite to start afresh, or choose "
                             "another --output")
        return False
    if found := [name for name in (*OWN_FILES, *OWN_FOLDERS) if (output / name).exists()]:
        raise FileExistsError(f"--output {output} holds {', '.join(found)} but no {RUN_FILE}: not a folder this "
                              "report made; add --overwrite to replace them, or choose another --output")
    return True


def start_folder(output: Path, arguments: dict) -> None:
    """Clear what an earlier report wrote (only this command's own files) and tie `output` to these
    arguments (run.json). Called once the model has loaded, so a failed start loses no earlier report."""
    for path in [*(output / name for name in OWN_FILES), *output.glob(JOURNAL_GLOB)]:
        path.unlink(missing_ok=True)
    for name in OWN_FOLDERS:
        shutil.rmtree(output / name, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    _write_text(output / RUN_FILE, json.dumps({"arguments": arguments, "started": started}, indent=2) + "\n")


def _write_text(target: Path, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")


def photo_list(inputs: Sequence[str]) -> list[Photo]:
    """Every photo in a fixed order, with the reason now known for one that will be skipped (a missing input,
    a file stem another photo already has)."""
    files, failures = image_files(inputs)
    stems: dict[str, str] = {}
    photos = [Photo(str(path), path, claim_stem(path, stems)) for path in files]
    return photos + [Photo(name, None, why) for name, why in failures]


def journal_path(output: Path, rank: int) -> Path:
    """Each process of a launched run journals in its own file; one process in journal.jsonl."""
    return output / (JOURNAL_FILE if rank == 0 else JOURNAL_FILE.replace(".", f"-{rank}.", 1))


def read_journals(output: Path) -> dict[str, dict]:
    """{photo: entry} of every journal in the folder, whichever number of processes wrote them."""
    return {photo: entry for path in sorted(output.glob(JOURNAL_GLOB)) for photo, entry in Journal(path).read().items()}


class Journal:
    """REPORT_DIR/journal.jsonl: one JSON line per finished photo, flushed to disk before the next photo."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict[str, dict]:
        """{photo: entry} of the finished photos. A last line cut short by a kill is dropped from the file."""
        if not self.path.is_file():
            return {}
        entries, good_bytes = {}, 0
        with open(self.path, "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    entry = None
                if entry is None:  # written in part when the run was killed: that photo is done again
                    break
                entries[entry["photo"]] = entry
                good_bytes += len(line)
        if good_bytes != self.path.stat().st_size:
            os.truncate(self.path, good_bytes)
        return entries

    @contextlib.contextmanager
    def appending(self) -> Iterator:
        with open(self.path, "a", encoding="utf-8") as handle:
            def append(entry: dict) -> None:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            yield append


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
        findings[prompt] = {**found, "mask": f"{MASKS_DIR}/{mask_file.name}", "overlay": overlay_name}
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


def findings_rows(photos: Sequence[Photo], entries: dict[str, dict], arguments: dict) -> list[dict]:
    """One findings row per (photo, prompt), in photo order, then prompt order."""
    rules = check_flag_rules(arguments["flag"], arguments["mm_per_pixel"])
    rows = []
    for photo in photos:
        entry = entries[photo.name]
        for prompt in arguments["prompts"]:
            found = entry["findings"][prompt] if entry["status"] == "ok" else None
            rows.append(finding_row(photo.name, prompt, found, arguments["mm_per_pixel"], rules,
                                    arguments["severity_bands"], skip_reason=entry.get("reason") or ""))
    return rows


def model_files(model: str) -> tuple[dict, str | None]:
    """(the model's config.json as a dict, its card text): from a local folder, or from the Hub cache."""
    folder = Path(model).expanduser()

    def read(name: str) -> str | None:
        if folder.is_dir():
            return (folder / name).read_text(encoding="utf-8") if (folder / name).is_file() else None
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(model, name)).read_text(encoding="utf-8")
        except Exception:  # offline, no such file, no access: the page says what it has
            return None

    return json.loads(read("config.json") or "{}"), read("README.md")


def threshold_origin(given: float | None, config: dict) -> str:
    if given is not None:
        return "given on the command line (--threshold)"
    if config.get("segmentation_threshold") is not None:
        return "calibrated on validation photos, stored in the model's config.json"
    return "the package default: the model has no calibrated threshold"


def write_report(output: Path, photos: Sequence[Photo], entries: dict[str, dict], arguments: dict,
                 threshold: float) -> list[dict]:
    """findings.csv, findings.jsonl and index.html, all from the journal's entries; returns the rows."""
    rows = findings_rows(photos, entries, arguments)
    write_findings(rows, output)
    config, card = model_files(arguments["model"])
    summary = PageSummary(
        model=arguments["model"], model_card=card, backend=arguments["backend"], threshold=threshold,
        threshold_origin=threshold_origin(arguments["threshold"], config),
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), prompts=arguments["prompts"],
        mm_per_pixel=arguments["mm_per_pixel"], flag_rules=arguments["flag"],
        default_flag_rules=tuple(arguments["flag"]) == DEFAULT_FLAG_RULES, severity_edges=arguments["severity_bands"])
    _write_text(output / PAGE_FILE, render_page(summary, [photo.name for photo in photos], rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    with user_errors(argv):
        args = _parser().parse_args(argv)
        arguments = check_call(args)
        fresh = check_folder(args.output, arguments, args.overwrite)
        segmenter = load_segmenter(args.model, args.backend, threshold=args.threshold, batch_size=args.batch_size,
                                   device=args.device or distributed.launched_device(), speed_options=args.speed,
                                   num_threads=distributed.cpu_threads_per_process())
        if fresh and distributed.is_main_process():
            start_folder(args.output, arguments)
        distributed.wait_for_everyone()
        photos = photo_list(args.inputs)
        entries = run_report(segmenter, photos, args.prompt, args.output)
        if not distributed.is_main_process():
            return 0  # the main process writes the report from every process's journal
        rows = write_report(args.output, photos, entries, arguments, segmenter.threshold)
    skipped = sum(entries[photo.name]["status"] == "skipped" for photo in photos)
    flagged = len({row["photo"] for row in rows if row["flagged"]})
    print(f"{len(photos)} photos ({flagged} flagged, {skipped} skipped); report: {args.output / PAGE_FILE}, "
          f"findings: {args.output / 'findings.csv'} (threshold {segmenter.threshold:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
