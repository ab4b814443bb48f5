"""`python -m data_builders build|push`: build the drywall-QA dataset from Roboflow exports, or publish it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clipseg_drywall.atomic_files import check_writable_folder
from clipseg_drywall.cli import ArgumentParser, user_errors
from clipseg_drywall.data import STATS_FILE

from .drywall_qa import build_layouts
from .hub import load_saved, push_to_hub, save_dataset, write_parquet
from .splits import SplitOptions
from .stats import compute_statistics, format_statistics


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m data_builders", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    b = commands.add_parser("build", help="read Roboflow exports and save the dataset with save_to_disk")
    b.add_argument("--cracks", action="append", default=[], metavar="PATH", help="a crack export (repeatable)")
    b.add_argument("--joints", action="append", default=[], metavar="PATH", help="a drywall-joint export (repeatable)")
    b.add_argument("--output", required=True, type=Path,
                   help="where to save the DatasetDict (+ stats.json): the source-disjoint layout with --split-by-source")
    b.add_argument("--split-by-source", action="store_true",
                   help="re-split train+valid per task into train/validation/test so no source photo is in two "
                        "splits; the export's own test split is kept as roboflow_test")
    for flag, kind, default, text in SplitOptions.flags():
        b.add_argument(flag, type=kind, default=default, help=text)
    b.add_argument("--parquet-dir", type=Path,
                   help="also write the Hub layout (Parquet + README.md card) here; with --split-by-source it holds "
                        "both configurations (default: official splits, 'source-disjoint')")
    b.add_argument("--push-to-hub", metavar="REPO_ID", help="also publish the Hub layout (as --parquet-dir)")

    p = commands.add_parser("push", help="publish a dataset saved by `build`")
    p.add_argument("dataset", type=Path, help="the --output folder of a build")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    return parser


def _build(args: argparse.Namespace) -> int:
    if not (args.cracks or args.joints):
        raise ValueError("give at least one --cracks PATH or --joints PATH")
    for flag, folder in (("--output", args.output), ("--parquet-dir", args.parquet_dir)):
        if folder is not None:
            check_writable_folder(folder, flag)
    started = time.perf_counter()
    options = {name: getattr(args, name) for name in SplitOptions.__dataclass_fields__}
    layouts, report = build_layouts(args.cracks, args.joints, split_by_source=args.split_by_source, **options)
    stats = compute_statistics(report)
    stats["build_seconds"] = round(time.perf_counter() - started, 1)
    save_dataset(layouts[report.layout], stats, args.output)  # train.py reads the asked-for layout
    print(format_statistics(stats))
    print(f"saved {args.output} ({report.layout} layout, {stats['build_seconds']} s); statistics in {args.output / STATS_FILE}")
    if args.parquet_dir:
        for path in write_parquet(layouts, stats, args.parquet_dir, repo_id=args.push_to_hub or "org/drywall-qa"):
            print(f"wrote {path}")
    if args.push_to_hub:
        push_to_hub(layouts, stats, args.push_to_hub)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Usage and input mistakes (a missing export, a bad ratio, an unwritable output) are one `error:`
    line with exit status 2 (ExportError is a ValueError); `--debug` shows the traceback."""
    with user_errors(argv):
        args = _parser().parse_args(argv)
        if args.command == "build":
            return _build(args)
        return _push(args)


def _push(args: argparse.Namespace) -> int:
    dataset, stats = load_saved(args.dataset)
    try:
        push_to_hub(dataset, stats, args.repo_id, private=args.private)
    except ValueError as error:  # a source-disjoint-only save cannot give the default configuration
        raise ValueError(f"{args.dataset}: {error}") from None
    print(json.dumps({"pushed": args.repo_id, "rows": stats["rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
