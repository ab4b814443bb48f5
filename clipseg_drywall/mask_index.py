"""predict's index.csv: what each mask file in a folder holds and what wrote it (the model's
fingerprint, the threshold, the backend), merged across calls; and the per-process shards a run
journals into, folded into index.csv at its end.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from .atomic_files import atomic_path

INDEX_FILE = "index.csv"
# what each mask holds and what wrote it: the model's fingerprint, the threshold and the backend
INDEX_COLUMNS = ("image", "prompt", "mask", "overlay", "model", "threshold", "backend")
SHARD_GLOB = ".index-shard-*.csv"  # one per process of a run, folded into index.csv at its end


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


def shard_path(folder: Path, rank: int) -> Path:
    return Path(folder) / SHARD_GLOB.replace("*", str(rank))


class IndexShard:
    """One process's journal of the rows it has written: appended and flushed to disk after each batch,
    so a killed run leaves a record of every mask it finished (a mask is renamed into place before its row)."""

    def __init__(self, folder: Path, rank: int):
        self.path = shard_path(folder, rank)
        fresh = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=INDEX_COLUMNS)
        if fresh:
            self._writer.writeheader()

    def append(self, rows: Sequence[dict[str, str]]) -> None:
        self._writer.writerows(rows)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _complete_rows(path: Path) -> list[dict[str, str]]:
    """A shard's rows, without a last line that a kill cut short."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if all(row.get(c) is not None for c in INDEX_COLUMNS)]


def merge_index_shards(folder: Path) -> int:
    """Fold every shard in `folder` into index.csv, then remove the shards; returns the rows folded.

    Idempotent: index.csv is replaced atomically before any shard goes, so a crash in between loses
    nothing and the next call (the next run of the command) completes the merge."""
    shards = sorted(Path(folder).glob(SHARD_GLOB))
    rows = [row for shard in shards for row in _complete_rows(shard)]
    if rows:
        update_index(folder, rows)
    for shard in shards:
        shard.unlink(missing_ok=True)
    return len(rows)
