"""predict's index.csv: what each mask file in a folder holds and what wrote it (the model's
fingerprint, the threshold, the backend), merged across calls; and the per-process shards a run
journals in (`pipeline.Journal`: one JSON line per finished photo holding its rows), folded into
index.csv at its end.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .atomic_files import atomic_path
from .pipeline import Journal

INDEX_FILE = "index.csv"
# what each mask holds and what wrote it: the model's fingerprint, the threshold and the backend
INDEX_COLUMNS = ("image", "prompt", "mask", "overlay", "model", "threshold", "backend")
# each process of a run journals its rows (the batch pipeline's resume format), folded into index.csv at its end
JOURNAL_STEM = ".journal"
JOURNAL_GLOB = ".journal*.jsonl"


def read_index(folder: Path) -> dict[str, dict[str, str]]:
    """{mask file: row} of the folder's index (empty when it has none)."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["mask"]: row for row in csv.DictReader(handle)}


def update_index(folder: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Merge this call's rows into `<folder>/index.csv` (image, prompt, mask, overlay, and the model
    fingerprint, threshold and backend that wrote the mask; file names relative to the folder), so it
    always says what each mask file in the folder holds."""
    merged = read_index(folder) | {row["mask"]: row for row in rows}
    target = Path(folder) / INDEX_FILE
    with atomic_path(target) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS, restval="",  # an older index lacks the provenance
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(merged[name] for name in sorted(merged))
    return target


def journal_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(JOURNAL_GLOB))


def fold_journals(folder: Path) -> int:
    """Fold the rows of every process's journal in `folder` into index.csv, then remove the journals; returns
    the rows folded.

    Idempotent: index.csv is replaced atomically before any journal goes, so a crash in between loses
    nothing and the next call (the next run of the command) completes the fold."""
    journals = journal_files(folder)
    rows = [row for path in journals for entry in Journal(path).read().values() for row in entry["rows"]]
    if rows:
        update_index(folder, rows)
    for path in journals:
        path.unlink(missing_ok=True)
    return len(rows)
