"""The report's journal: REPORT_DIR/journal.jsonl, one JSON line per finished photo (the batch pipeline's
resume format, `pipeline.Journal`), synced to disk once per batch, so a killed run goes on where it stopped.
Each finding records its mask's SHA-256 (`file_sha256`), so that a re-render can tell a mask that changed
since it was measured. Under `accelerate launch` process N journals in journal-N.jsonl; a reader takes
them all, whichever number of processes wrote them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..pipeline import Journal, journal_file, read_journal_files

__all__ = ["JOURNAL_FILE", "JOURNAL_GLOB", "Journal", "journal_path", "read_journals"]

JOURNAL_STEM = "journal"
JOURNAL_FILE = "journal.jsonl"
JOURNAL_GLOB = "journal*.jsonl"  # journal.jsonl, and journal-N.jsonl of process N of a launched run


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (a mask's, recorded beside its measurements)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # masks are small PNGs: read whole


def journal_path(output: Path, rank: int) -> Path:
    """Each process of a launched run journals in its own file; one process in journal.jsonl."""
    return journal_file(output, rank, JOURNAL_STEM)


def read_journals(output: Path) -> dict[str, dict]:
    """{photo: entry} of every journal in the folder, whichever number of processes wrote them."""
    return read_journal_files(output, JOURNAL_STEM)
