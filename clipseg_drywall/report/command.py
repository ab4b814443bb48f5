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
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import distributed
from ..cli import ArgumentParser, user_errors
from ..fingerprint import model_fingerprint
from ..predict import add_segmenter_arguments, pipeline_options
from ..predict import check_arguments as check_segmenter_arguments
from ..prompts import CANONICAL_PROMPTS
from ..segmenters import load_segmenter
from .findings import DEFAULT_FLAG_RULES, check_flag_rules, findings_rows, write_findings
from .folder import check_folder, start_folder, write_text
from .measurements import SEVERITY_EDGES_MM, check_severity_edges
from .page import PAGE_FILE, page_summary, render_page
from .runner import photo_list, run_report

DEFAULT_PROMPTS = list(CANONICAL_PROMPTS.values())


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


def check_arguments(args: argparse.Namespace) -> dict:
    """Every check that needs no model; returns the arguments the report folder is tied to."""
    args.prompt = list(dict.fromkeys(args.prompt or DEFAULT_PROMPTS))
    check_segmenter_arguments(args)  # prompts, threshold, batch size, photos, output folder, model source
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


def write_report(output: Path, photos: Sequence[str], entries: dict[str, dict], arguments: dict,
                 threshold: float) -> list[dict]:
    """findings.csv, findings.jsonl and index.html, all from the journal's entries; returns the rows."""
    rows = findings_rows(photos, entries, arguments)
    write_findings(rows, output)
    write_text(output / PAGE_FILE, render_page(page_summary(arguments, threshold, DEFAULT_FLAG_RULES), photos, rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    with user_errors(argv):
        args = _parser().parse_args(argv)
        arguments = check_arguments(args)
        fresh = check_folder(args.output, arguments, args.overwrite)
        segmenter = load_segmenter(args.model, args.backend, threshold=args.threshold, batch_size=args.batch_size,
                                   device=args.device or distributed.launched_device(), speed_options=args.speed,
                                   num_threads=distributed.cpu_threads_per_process())
        if fresh and distributed.is_main_process():
            start_folder(args.output, arguments)
        distributed.wait_for_everyone()
        photos = photo_list(args.inputs)
        entries = run_report(segmenter, photos, args.prompt, args.output, pipeline_options(args))
        if not distributed.is_main_process():
            return 0  # the main process writes the report from every process's journal
        rows = write_report(args.output, [photo.name for photo in photos], entries, arguments, segmenter.threshold)
    skipped = sum(entries[photo.name]["status"] == "skipped" for photo in photos)
    flagged = len({row["photo"] for row in rows if row["flagged"]})
    print(f"{len(photos)} photos ({flagged} flagged, {skipped} skipped); report: {args.output / PAGE_FILE}, "
          f"findings: {args.output / 'findings.csv'} (threshold {segmenter.threshold:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
