"""What the benchmarks share: where ../shared is, and the dataset built from it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_dataset_path(path: Path) -> str:
    """`path` holding the DatasetDict built from ../shared/data (built there on first use, ~20 s)."""
    if not (path / "dataset_dict.json").is_file():
        if not (SHARED / "data").is_dir():
            raise SystemExit(f"no dataset given and no real data in {SHARED / 'data'}: pass --dataset_path")
        from data_builders.drywall_qa import build_dataset

        build_dataset(cracks=[SHARED / "data" / "cracks"], joints=[SHARED / "data" / "drywall-join-detect"],
                      seed=0).save_to_disk(str(path))
    return str(path)
