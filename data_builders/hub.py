"""Publishing the dataset: Parquet shards plus a dataset card, as `load_dataset("org/drywall-qa")` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from clipseg_drywall.prompts import CANONICAL_PROMPTS, PROMPTS

from .stats import format_statistics

STATS_FILE = "stats.json"

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ pretty_name }}

Site photos of drywall with a text prompt and a binary mask: cracks (`task: crack`) and
drywall joints / taping areas (`task: taping`). Made for text-prompted segmentation models
such as CLIPSeg. Built with the `data_builders` package of clipseg-drywall.

## Columns

| column | type | meaning |
|---|---|---|
| `image` | image (RGB) | the photo, as stored in the export |
| `mask` | image (L) | values exactly {0, 255}, same size as `image`: the union of the task's objects |
| `prompt` | string | train: a synonym drawn (seeded) from the vocabulary below; validation/test: the canonical prompt |
| `task` | string | `crack` or `taping` |
| `image_id` | string | the export's file name |
| `source_id` | string | the photo the file was made from (the name before `.rf.`) |

Crack masks are filled polygons (boxes for the few crack objects without a polygon); joint masks
are filled boxes, so taping masks are box-shaped.

## Prompt vocabulary

{% for task, prompts in vocabulary.items() -%}
- **{{ task }}** (canonical: "{{ canonical[task] }}"): {{ prompts | map('tojson') | join(', ') }}
{% endfor %}

## Sources and licence

CC BY 4.0. Attribution:
- cracks: Roboflow Universe project `fyp-ny1jt/cracks-3ii36` (YOLOv8 export of the fork
  `vaibhav-tiwari/cracks-3ii36-ggtdw` v1), licence CC BY 4.0;
- joints: Roboflow Universe project `objectdetect-pu6rn/drywall-join-detect` v2 (COCO export),
  licence CC BY 4.0.

## Statistics

| split | task | images | empty masks | mask coverage (mean ± std) | objects / image |
|---|---|---|---|---|---|
{% for split, tasks in stats.splits.items() -%}
{% for task, s in tasks.items() -%}
| {{ split }} | {{ task }} | {{ s.images }} | {{ s.empty_masks }} | {{ '%.2f' | format(100 * s.mask_coverage.mean) }}% ± {{ '%.2f' | format(100 * s.mask_coverage.std) }} | {{ '%.2f' | format(s.objects_per_image.mean) }} |
{% endfor -%}
{% endfor %}
Files skipped while building: {{ stats.skipped.count }}.

## Leakage between splits

Roboflow exports hold augmented copies of each source photo and were split after augmenting.
{% for task, per_split in stats.leakage.items() -%}
{% for split, leak in per_split.items() -%}
- {{ task }} / {{ split }}: {{ leak.leaked_either_way }} of {{ leak.images }} images share their photo with train
  ({{ leak.shared_source_id }} by source name, {{ leak.hash_only_near_duplicates }} more by perceptual hash).
{% endfor -%}
{% endfor %}
{% if stats.leakage_after_resplit -%}
This copy was re-split by source photo (`--split-by-source`); after the re-split:
{% for task, per_split in stats.leakage_after_resplit.items() -%}
{% for split, leak in per_split.items() -%}
- {{ task }} / {{ split }}: {{ leak.leaked_either_way }} of {{ leak.images }} images.
{% endfor -%}
{% endfor -%}
{% else -%}
Validation scores on the taping task therefore measure memorised photos as much as
generalisation; rebuild with `--split-by-source` for a leak-free split.
{% endif %}

## Build report

```
{{ report }}
```
"""


def dataset_card(stats: dict, pretty_name: str = "Drywall QA (cracks and taping areas)") -> DatasetCard:
    rows = stats["rows"]
    size = "n<1K" if rows < 1000 else "1K<n<10K" if rows < 10000 else "10K<n<100K"
    card_data = DatasetCardData(
        license="cc-by-4.0",
        pretty_name=pretty_name,
        task_categories=["image-segmentation"],
        size_categories=[size],
        tags=["drywall", "construction", "crack-segmentation", "clipseg", "roboflow"],
    )
    return DatasetCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        pretty_name=pretty_name,
        vocabulary=PROMPTS,
        canonical=CANONICAL_PROMPTS,
        stats=stats,
        report=format_statistics(stats, max_files=50),  # the full lists stay in stats.json
    )


def save_dataset(dataset: datasets.DatasetDict, stats: dict, output: Path) -> None:
    """`save_to_disk`, with the statistics beside it (the card is made from them at push time)."""
    dataset.save_to_disk(str(output))
    (output / STATS_FILE).write_text(json.dumps(stats, indent=2))


def load_saved(path: Path) -> tuple[datasets.DatasetDict, dict]:
    stats_path = path / STATS_FILE
    if not stats_path.is_file():
        raise FileNotFoundError(f"{stats_path} missing: build the dataset with `python -m data_builders build`")
    return datasets.load_from_disk(str(path)), json.loads(stats_path.read_text())


def write_parquet(dataset: datasets.DatasetDict, stats: dict, output: Path) -> list[Path]:
    """The files `push_to_hub` would upload, written locally: README.md + data/<split>-*.parquet."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in dataset.items():
        path = output / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(exist_ok=True)
        rows.to_parquet(str(path))  # Image columns are embedded as bytes: the files stand alone
        written.append(path)
    dataset_card(stats).save(output / "README.md")
    return written + [output / "README.md"]


def push_to_hub(dataset: datasets.DatasetDict, stats: dict, repo_id: str, private: bool = False) -> None:
    """Parquet shards through `datasets`, then the card through `huggingface_hub` (token from `hf auth login`)."""
    dataset.push_to_hub(repo_id, private=private)
    dataset_card(stats).push_to_hub(repo_id, repo_type="dataset")
