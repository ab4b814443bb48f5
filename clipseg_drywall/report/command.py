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
  run.json         the arguments, the model's fingerprint and threshold, what each re-render changed;
                   journal.jsonl: one line per finished photo (journal-N.jsonl: process N's, under
                   accelerate launch); review.csv: the review a re-render applied

`accelerate launch -m clipseg_drywall.report ...` splits the photos between its processes (GPUs, or
shares of the CPU cores); the findings are those of one process.

A run that stops (killed, power cut) goes on where it stopped when started again with the same
arguments, and ends with the same findings; different arguments into the same folder are refused,
naming what differs; --overwrite starts afresh. A photo that cannot be read is listed as skipped with
the reason. Lengths and widths are in pixels, or in mm with --mm_per_pixel or a scale per photo
(--scale_file), which also gives each crack a severity band from its largest width. Regions under
--min_region_px pixels are specks, dropped before measuring. Mistakes in the call are one `error:`
line and exit status 2, before the model loads.

`--rerender REPORT_DIR` renders a finished report again from its masks and journal, with other flag
rules, bands, scale or speck filter, and a review (`--review punch-list.csv`, as the page exports it),
loading no model (see `rerender`; `--rerender REPORT_DIR --help`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import distributed
from ..cli import ArgumentParser, user_errors
from ..fingerprint import model_fingerprint
from ..predict import add_segmenter_arguments, pipeline_options
from ..predict import check_arguments as check_segmenter_arguments
from ..prompts import CANONICAL_PROMPTS
from ..segmenters import load_segmenter
from . import rerender
from .findings import DEFAULT_FLAG_RULES, check_flag_rules, parse_flag_rule
from .folder import check_folder, start_folder
from .measurements import DEFAULT_MIN_REGION_PX, SEVERITY_EDGES_MM, check_severity_edges
from .page import PAGE_FILE, model_facts
from .render import read_run, render, write_rendered
from .runner import Photo, photo_list, run_report
from .scales import check_scales, read_scale_file

DEFAULT_PROMPTS = list(CANONICAL_PROMPTS.values())


def add_render_arguments(parser: argparse.ArgumentParser, rerender: bool = False) -> None:
    """The options that say how the masks are read: scale, flag rules, bands, speck filter. A run and a
    re-render share them; in a re-render, one not given keeps the folder's."""
    keep = " (default: the folder's)" if rerender else ""
    parser.add_argument("--mm_per_pixel", type=float,
                        help="one scale for every photo: lengths and widths in mm, and a severity band per crack" + keep)
    parser.add_argument("--scale_file", type=Path, metavar="CSV",
                        help="a scale per photo instead: a CSV with the columns photo (file name, or path as listed) "
                             "and mm_per_pixel; photos it does not list stay in pixels, and the page names them" + keep)
    default_rules = "the folder's" if rerender else " ; ".join(DEFAULT_FLAG_RULES).replace("%", "%%")
    parser.add_argument("--flag", action="append", metavar="RULE",
                        help="when a (photo, prompt) is flagged, '[PROMPT_OR_TASK:] METRIC >|>= VALUE[UNIT]', "
                             "METRIC: coverage (%%), regions, length, max_width, mean_width (px or mm); repeatable, "
                             f"any rule that holds flags (default: {default_rules})")
    parser.add_argument("--severity_bands", default=None if rerender else ",".join(f"{e:g}" for e in SEVERITY_EDGES_MM),
                        metavar="MM,MM,MM", help="upper edges of hairline, fine and medium in mm; wider is wide "
                                                 "(default: %(default)s)" + keep)
    parser.add_argument("--min_region_px", type=int, default=None if rerender else DEFAULT_MIN_REGION_PX, metavar="N",
                        help="drop regions of fewer than N pixels (specks) before measuring; the mask files keep them; "
                             "0: off (default: %(default)s, chosen from the annotated masks, see docs/report.md)" + keep)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="PHOTO_OR_DIR", help="photos and/or folders of photos")
    parser.add_argument("--output", required=True, type=Path, help="the report folder (REPORT_DIR)")
    parser.add_argument("--prompt", action="append",
                        help=f"a text prompt (repeatable; default: {' and '.join(map(repr, DEFAULT_PROMPTS))})")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in a folder that holds a report")
    parser.add_argument("--rerender", metavar="REPORT_DIR",
                        help="render a finished report again from its masks and journal, loading no model "
                             "(no photos or --model then; see --rerender REPORT_DIR --help)")
    add_segmenter_arguments(parser)
    add_render_arguments(parser)
    return parser


def _rerender_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.report", description=rerender.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rerender", required=True, type=Path, metavar="REPORT_DIR", help="the report folder")
    add_render_arguments(parser, rerender=True)
    parser.add_argument("--review", type=Path, metavar="CSV",
                        help="a punch list the page exported (any CSV with photo, prompt, review and note columns): "
                             "its review and note become columns of findings.csv and the page")
    return parser


def check_render_arguments(args: argparse.Namespace) -> dict:
    """The settings given for reading the masks, checked (None where not given); the scale file read but its
    photos not yet matched to the report's."""
    if args.mm_per_pixel is not None and args.scale_file is not None:
        raise ValueError("give --mm_per_pixel (one scale) or --scale_file (a scale per photo), not both")
    if args.mm_per_pixel is not None and not args.mm_per_pixel > 0:
        raise ValueError(f"--mm_per_pixel must be positive, got {args.mm_per_pixel}")
    if args.min_region_px is not None and args.min_region_px < 0:
        raise ValueError(f"--min_region_px must be 0 (off) or more pixels, got {args.min_region_px}")
    edges = None
    if args.severity_bands is not None:
        try:
            edges = tuple(float(edge) for edge in args.severity_bands.split(","))
        except ValueError:
            raise ValueError(f"--severity_bands {args.severity_bands!r}: give widths in mm, e.g. 0.1,0.3,0.7") from None
        edges = list(check_severity_edges(edges))
    return {"mm_per_pixel": args.mm_per_pixel, "flag": [parse_flag_rule(text).text for text in args.flag or []] or None,
            "severity_bands": edges, "min_region_px": args.min_region_px,
            "scale_file": str(args.scale_file.resolve()) if args.scale_file else None,
            "scales": read_scale_file(args.scale_file) if args.scale_file else None}


def check_arguments(args: argparse.Namespace, photos: list[Photo]) -> dict:
    """Every check that needs no model; returns the arguments the report folder is tied to."""
    args.prompt = list(dict.fromkeys(args.prompt or DEFAULT_PROMPTS))
    check_segmenter_arguments(args)  # prompts, threshold, batch size, photos, output folder, model source
    given = check_render_arguments(args)
    scales = None
    if given["scales"] is not None:  # names checked against the photos now, before the model loads
        scales = check_scales(given["scales"], [photo.name for photo in photos], given["scale_file"])
    scaled = args.mm_per_pixel is not None or bool(scales)
    rules = [rule.text for rule in check_flag_rules(given["flag"] or DEFAULT_FLAG_RULES, scaled)]
    return {"inputs": [str(Path(name).resolve()) for name in args.inputs], "model": args.model,
            "model_fingerprint": model_fingerprint(args.model), "backend": args.backend, "prompts": args.prompt,
            "threshold": args.threshold, "batch_size": args.batch_size, "device": args.device, "speed": args.speed,
            "mm_per_pixel": args.mm_per_pixel, "scale_file": given["scale_file"], "scales": scales, "flag": rules,
            "severity_bands": given["severity_bands"], "min_region_px": given["min_region_px"]}


def rerender_main(argv: list[str]) -> int:
    """`--rerender REPORT_DIR ...`: the report rendered again from its folder (see `rerender`)."""
    args, extra = _rerender_parser().parse_known_args(argv)
    if extra:
        raise ValueError(f"--rerender renders the folder's masks again, so it takes no photos, model or segmenter "
                         f"options: {' '.join(extra)} (see --rerender REPORT_DIR --help)")
    record, rows = rerender.rerender(args.rerender, check_render_arguments(args), args.review)
    changed = "; ".join(f"{flag}: {value['then']!r} then, {value['now']!r} now" for flag, value in record["changed"].items())
    flagged = len({row["photo"] for row in rows if row["flagged"]})
    print(f"re-rendered {args.rerender / PAGE_FILE} and findings.csv from the folder's masks ({flagged} photos flagged; "
          f"{changed or 'no rule, scale or filter changed'}"
          + (f"; review: {record['review']['accepted']} accepted, {record['review']['rejected']} rejected" if
             "review" in record else "") + ")")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with user_errors(argv):
        if any(arg == "--rerender" or arg.startswith("--rerender=") for arg in argv):
            return rerender_main(argv)
        args = _parser().parse_args(argv)
        photos = photo_list(args.inputs)
        arguments = check_arguments(args, photos)
        fresh = check_folder(args.output, arguments, args.overwrite)
        segmenter = load_segmenter(args.model, args.backend, threshold=args.threshold, batch_size=args.batch_size,
                                   device=args.device or distributed.launched_device(), speed_options=args.speed,
                                   num_threads=distributed.cpu_threads_per_process())
        if fresh and distributed.is_main_process():
            start_folder(args.output, arguments, model_facts(args.model, args.threshold, segmenter.threshold))
        distributed.wait_for_everyone()
        entries = run_report(segmenter, photos, args.prompt, args.output, pipeline_options(args), args.min_region_px)
        if not distributed.is_main_process():
            return 0  # the main process writes the report from every process's journal
        rows, page = render(args.output, [photo.name for photo in photos], entries, read_run(args.output))
        write_rendered(args.output, rows, page)
    skipped = sum(entries[photo.name]["status"] == "skipped" for photo in photos)
    flagged = len({row["photo"] for row in rows if row["flagged"]})
    print(f"{len(photos)} photos ({flagged} flagged, {skipped} skipped); report: {args.output / PAGE_FILE}, "
          f"findings: {args.output / 'findings.csv'} (threshold {segmenter.threshold:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
