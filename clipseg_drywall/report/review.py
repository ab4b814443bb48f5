"""A review of the findings: each (photo, prompt) accepted, rejected or open (not reviewed yet), with a note.

The page keeps a review in the browser and exports it as punch-list.csv: findings.csv's columns with the
review and note filled in. `--rerender --review punch-list.csv` reads one back (only its photo, prompt,
review and note columns: a spreadsheet may have added or dropped the others); its review and note become
columns of findings.csv and the page, and a copy of the reviewed rows (REPORT_DIR/review.csv) stays in the
folder, so that later renders keep it. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from ..atomic_files import atomic_path
from .findings import REVIEW_STATES, named_photo, photo_index

REVIEW_FILE = "review.csv"
REVIEW_COLUMNS = ("photo", "prompt", "review", "note")
Review = dict[tuple[str, str], tuple[str, str]]  # (photo, prompt) -> (review, note)


def _check_row(row: dict, index: dict[str, str | None], prompts: set[str], where: str) -> tuple[tuple[str, str], str]:
    """((photo, prompt), review) of one row of a review file, or a ValueError that says what is wrong."""
    name, prompt = (row["photo"] or "").strip(), (row["prompt"] or "").strip()
    review = (row["review"] or "open").strip().casefold()
    if review not in REVIEW_STATES:
        raise ValueError(f"{where}: review {row['review']!r} is not one of {', '.join(REVIEW_STATES)}")
    try:
        photo = named_photo(name, index)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if prompt not in prompts:
        raise ValueError(f"{where}: {prompt!r} is not a prompt of this report ({', '.join(sorted(prompts))})")
    return (photo, prompt), review


def read_review_file(path: Path, photos: Sequence[str], prompts: Sequence[str], what: str = "--review") -> Review:
    """The reviewed findings (not open, or with a note) of a punch list, checked against the report's photos
    and prompts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    index, prompts = photo_index(photos), set(prompts)
    review: Review = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(handle)
        if missing := [column for column in REVIEW_COLUMNS[:3] if column not in (reader.fieldnames or [])]:
            raise ValueError(f"{what} {path}: no {' or '.join(missing)} column (a punch list the page exported "
                             f"has {', '.join(REVIEW_COLUMNS)})")
        for row in reader:
            where = f"{what} {path} line {reader.line_num}"
            key, state = _check_row(row, index, prompts, where)
            if key in review:
                raise ValueError(f"{where}: {key[0]} under {key[1]!r} is reviewed twice")
            note = (row.get("note") or "").strip()
            if state != "open" or note:
                review[key] = (state, note)
    return review


def apply_review(rows: Sequence[dict], review: Review) -> None:
    """Each row's review and note from `review` (open, no note, where it has none)."""
    for row in rows:
        row["review"], row["note"] = review.get((row["photo"], row["prompt"]), ("open", ""))


def write_review_file(review: Review, folder: Path) -> Path:
    """REPORT_DIR/review.csv, atomically: the reviewed findings, for later renders of the folder."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(REVIEW_COLUMNS)
    writer.writerows([photo, prompt, state, note] for (photo, prompt), (state, note) in review.items())
    with atomic_path(Path(folder) / REVIEW_FILE) as temporary:
        temporary.write_text(text.getvalue(), encoding="utf-8")
    return Path(folder) / REVIEW_FILE


def review_counts(rows: Sequence[dict]) -> dict[str, int]:
    """How many findings are accepted, rejected and open."""
    return {state: sum(row["review"] == state for row in rows) for state in REVIEW_STATES}
