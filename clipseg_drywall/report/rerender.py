"""`clipseg-drywall-report --rerender REPORT_DIR [--flag RULE ...] [--severity_bands MM,MM,MM]
[--mm_per_pixel M | --scale_file CSV] [--min_region_px N] [--review punch-list.csv]`

Renders a finished report again, from its folder alone: index.html, findings.csv and findings.jsonl are
rebuilt from the masks and the journal, with the flag rules, severity bands, scale and speck filter given
(each one not given keeps the folder's), and with a review: the `review` and `note` of a punch list the
page exported become columns of the findings and the page. No model is loaded and torch is not imported,
so a site office can change a rule in seconds on a laptop. A new speck filter measures the masks again
(the mask files are only read).

Before anything is written, every mask the journal names must be there and hold the bytes it was
measured from (the journal records each mask's SHA-256); a report with missing or altered masks is
refused, naming them, and nothing changes. run.json then takes the new settings, so that the folder says
what it holds, and lists each re-render: when, what it changed (then and now), and the review it applied.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path

from .findings import check_flag_rules
from .folder import ARGUMENT_FLAGS, RUN_FILE, write_text
from .journal import file_sha256, read_journals
from .render import read_run, render, write_rendered
from .review import read_review_file, review_counts, write_review_file
from .scales import check_scales

FINDINGS_JSONL = "findings.jsonl"
RENDER_SETTINGS = ("mm_per_pixel", "scale_file", "scales", "flag", "severity_bands", "min_region_px")


def finished_photos(folder: Path, entries: dict[str, dict]) -> list[str]:
    """The report's photos in its order, from the findings.jsonl its run wrote once every photo was done."""
    path = folder / FINDINGS_JSONL
    if not path.is_file():
        raise FileNotFoundError(f"--rerender {folder}: no {FINDINGS_JSONL}, so its run did not finish: run the report "
                                "again with the same arguments to finish it, then re-render")
    try:
        photos = list(dict.fromkeys(json.loads(line)["photo"] for line in path.read_text(encoding="utf-8").splitlines()))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"--rerender {folder}: {path} is not the findings file the report writes") from None
    if lacking := [photo for photo in photos if photo not in entries]:
        raise ValueError(f"--rerender {folder}: the journal lacks {len(lacking)} photo(s) of {FINDINGS_JSONL}, "
                         f"e.g. {lacking[0]}; nothing was changed")
    return photos


def mask_problems(folder: Path, entries: Sequence[dict]) -> list[str]:
    """'masks/x.png is missing' or '... changed since it was measured' for each mask the entries name that is
    not what was measured (a journal from before the hashes were recorded: presence only)."""
    problems = []
    for entry in entries:
        for found in entry.get("findings", {}).values() if entry["status"] == "ok" else ():
            path = folder / found["mask"]
            if not path.is_file():
                problems.append(f"{found['mask']} is missing")
            elif found.get("mask_sha256") and file_sha256(path) != found["mask_sha256"]:
                problems.append(f"{found['mask']} changed since it was measured")
    return problems


def new_arguments(saved: dict, given: dict, photos: Sequence[str]) -> dict:
    """The folder's arguments with the render settings given (None: keep the folder's); a scale replaces a
    scale file and the other way round."""
    arguments = dict(saved)
    arguments.update({key: given[key] for key in ("flag", "severity_bands", "min_region_px") if given[key] is not None})
    if given["mm_per_pixel"] is not None:
        arguments.update(mm_per_pixel=given["mm_per_pixel"], scale_file=None, scales=None)
    if given["scales"] is not None:
        arguments.update(mm_per_pixel=None, scale_file=given["scale_file"],
                         scales=check_scales(given["scales"], photos, given["scale_file"]))
    check_flag_rules(arguments["flag"], arguments.get("mm_per_pixel") is not None or bool(arguments.get("scales")))
    return arguments


def changes(saved: dict, arguments: dict) -> dict[str, dict]:
    """{flag: {"then": ..., "now": ...}} for each render setting the re-render changed."""
    flags = {**ARGUMENT_FLAGS, "scale_file": "--scale_file (its path)"}
    return {flags[key]: {"then": saved.get(key), "now": arguments.get(key)} for key in RENDER_SETTINGS
            if saved.get(key) != arguments.get(key)}


def rerender(folder: Path, given: dict, review_file: Path | None = None) -> tuple[dict, list[dict]]:
    """Render REPORT_DIR again with the settings `given` (`command.check_render_arguments`) and the review in
    `review_file`; every check comes before the first write. Returns (run.json's record of it, the rows)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--rerender {folder}: no such folder")
    run = read_run(folder)
    entries = read_journals(folder)
    photos = finished_photos(folder, entries)
    if problems := mask_problems(folder, [entries[photo] for photo in photos]):
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(f"--rerender {folder}: {len(problems)} mask(s) are not those the report measured: "
                         f"{'; '.join(problems[:5])}{more}. Nothing was changed; restore them, or run the report "
                         "again with --overwrite to segment afresh")
    arguments = new_arguments(run["arguments"], given, photos)
    review = read_review_file(review_file, photos, arguments["prompts"]) if review_file is not None else None
    updated = {**run, "arguments": arguments}
    rows, page = render(folder, photos, entries, updated, review)
    record = {"at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "changed": changes(run["arguments"], arguments)}
    if review_file is not None:
        record["review"] = {"file": str(Path(review_file).resolve()), **review_counts(rows)}
    updated["rerenders"] = [*run.get("rerenders", []), record]
    if review is not None:
        write_review_file(review, folder)
    write_rendered(folder, rows, page)
    write_text(folder / RUN_FILE, json.dumps(updated, indent=2) + "\n")
    return record, rows
