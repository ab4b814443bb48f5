"""Rendering a report folder: findings.csv, findings.jsonl and index.html from the journal's entries and the
settings that say how to read them (flag rules, severity bands, scale, speck filter, review).

A run renders once its photos are done (`command`); a re-render renders again from the folder alone
(`rerender`). Both go through `render`, which writes nothing, then `write_rendered`, so a re-render can
check everything before it changes a file. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..segmenters.base import threshold_of
from .findings import DEFAULT_FLAG_RULES, findings_rows, is_crack_prompt, write_findings
from .folder import RUN_FILE, write_text
from .measurements import measure
from .page import PAGE_FILE, model_config_and_card, model_facts, page_summary, render_page
from .review import REVIEW_FILE, Review, apply_review, read_review_file


def read_run(folder: Path) -> dict:
    """REPORT_DIR/run.json: the arguments, the start time and the model's facts of the run that made the folder."""
    path = Path(folder) / RUN_FILE
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        run["arguments"]["prompts"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {RUN_FILE}, so not a folder the report made") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a report's run file") from None
    return run


def run_facts(run: dict) -> dict:
    """The model's facts the page states (`page.model_facts`), as run.json recorded them when the model loaded;
    for a folder made before it did, from the model folder if it is at hand (never the network)."""
    if all(key in run for key in ("threshold", "threshold_origin", "model_card")):
        return {key: run[key] for key in ("threshold", "threshold_origin", "model_card")}
    arguments = run["arguments"]
    config, _ = model_config_and_card(arguments["model"], hub=False)
    given = arguments.get("threshold")
    threshold = run.get("threshold") or (given if given is not None else threshold_of(config))
    return model_facts(arguments["model"], given, float(threshold), hub=False)


def report_identity(run: dict, review: Review) -> str:
    """What names this report in the browser's storage (its review): when it started, the model's fingerprint
    and, once a review file was applied, a digest of that review, so that the page then starts from the file
    (perhaps edited in a spreadsheet) rather than from what the browser kept before."""
    identity = f"{run.get('started', '')}|{run['arguments'].get('model_fingerprint', '')[:16]}"
    if review:
        text = json.dumps(sorted([*key, *value] for key, value in review.items()), ensure_ascii=False)
        identity += "|review:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return identity


def remeasured(output: Path, entries: dict[str, dict], min_region_px: int) -> dict[str, dict]:
    """The entries with every finding measured at `min_region_px`: one the journal holds at another speck
    filter (or before the filter existed: 0) is measured again from its mask file, which is only read."""
    result = {}
    for photo, entry in entries.items():
        if entry["status"] != "ok":
            result[photo] = entry
            continue
        findings = {}
        for prompt, found in entry["findings"].items():
            if found.get("min_region_px", 0) != min_region_px:
                with Image.open(Path(output) / found["mask"]) as image:
                    mask = np.asarray(image)
                found = {**found, **measure(mask, is_crack_prompt(prompt), min_region_px).as_dict()}
            findings[prompt] = found
        result[photo] = {**entry, "findings": findings}
    return result


def folder_review(output: Path, photos: Sequence[str], prompts: Sequence[str]) -> Review:
    """The review a re-render left in the folder (REPORT_DIR/review.csv), or none."""
    path = Path(output) / REVIEW_FILE
    return read_review_file(path, photos, prompts, what="the folder's review") if path.is_file() else {}


def render(output: Path, photos: Sequence[str], entries: dict[str, dict], run: dict,
           review: Review | None = None) -> tuple[list[dict], str]:
    """(findings rows, page html) of the folder's entries under the run's arguments, with `review` (default:
    the folder's); writes nothing."""
    arguments = run["arguments"]
    min_region_px = arguments.get("min_region_px", 0)  # a folder made before the filter: none
    rows = findings_rows(photos, remeasured(output, entries, min_region_px), arguments)
    review = folder_review(output, photos, arguments["prompts"]) if review is None else review
    apply_review(rows, review)
    summary = page_summary(arguments, run_facts(run), DEFAULT_FLAG_RULES, report_identity(run, review))
    return rows, render_page(summary, photos, rows)


def write_rendered(output: Path, rows: Sequence[dict], page: str) -> None:
    """findings.csv, findings.jsonl and index.html, each atomically."""
    write_findings(rows, output)
    write_text(Path(output) / PAGE_FILE, page)
