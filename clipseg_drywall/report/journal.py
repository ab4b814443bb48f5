"""The report's journal: REPORT_DIR/journal.jsonl, one JSON line per finished photo, flushed to disk
before the next photo, so a killed run goes on where it stopped. Each finding records its mask's SHA-256
(`file_sha256`), so that a re-render can tell a mask that changed since it was measured. Under `accelerate launch` process N
journals in journal-N.jsonl; a reader takes them all, whichever number of processes wrote them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

JOURNAL_FILE = "journal.jsonl"
JOURNAL_GLOB = "journal*.jsonl"  # journal.jsonl, and journal-N.jsonl of process N of a launched run


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (a mask's, recorded beside its measurements)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # masks are small PNGs: read whole


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
