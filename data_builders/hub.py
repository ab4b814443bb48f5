"""Publishing the dataset: Parquet shards plus a dataset card, as `load_dataset("org/drywall-qa")` reads them.

The layout holds two dataset configurations, declared in the card's YAML `configs:` (the field
`datasets` reads to find each configuration's files):
- `default` (`load_dataset(repo)`): the exports' own splits, in `data/`;
- `source-disjoint` (`load_dataset(repo, "source-disjoint")`): no photo in two splits, in `source-disjoint/`.
The same files are written locally (`write_parquet`) and uploaded (`push_to_hub`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from clipseg_drywall.data import LAYOUT_KEY, LEAKED_KEY, STATS_FILE
from clipseg_drywall.prompts import CANONICAL_PROMPTS, PROMPTS

from .splits import KEPT_TEST, OFFICIAL, SOURCE_DISJOINT
from .stats import format_statistics

DATA_DIRS = {OFFICIAL: "data", SOURCE_DISJOINT: SOURCE_DISJOINT}  # configuration -> folder of its Parquet files

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
| `prompt` | string | train: a synonym drawn (seeded) from the vocabulary below; other splits: the canonical prompt |
| `task` | string | `crack` or `taping` |
| `image_id` | string | the export's file name |
| `source_id` | string | the photo the file was made from (the name before `.rf.`) |

Crack masks are filled polygons (boxes for the few crack objects without a polygon); joint masks
are filled boxes, so taping masks are box-shaped.

## Configurations

```python
from datasets import load_dataset
official = load_dataset("{{ repo_id }}")                     # the Roboflow exports' own splits
{% if configurations | length > 1 -%}
honest = load_dataset("{{ repo_id }}", "source-disjoint")   # no source photo in two splits
{% endif -%}
```

| configuration | splits |
|---|---|
{% for name, c in configurations.items() -%}
| `{{ name }}` | {% for split, n in c.split_sizes.items() %}{{ split }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %} |
{% endfor %}
- `default` (what `load_dataset` gives without a name): train / validation / test as the Roboflow
  exports ship them, for comparison with published results. Roboflow split after augmenting, so
  their validation and test images can share source photos with train (counts below).
{% if stats.source_disjoint -%}
{% set options = stats.source_disjoint.options -%}
- `source-disjoint`: per task, train + validation pooled and cut into train / validation / test
  (validation {{ options.validation_ratio }} and test {{ options.test_ratio }} of the pool, seed {{ options.seed }})
  by groups of images that share a source photo, by name or by perceptual hash (distance <= {{ options.hash_distance }}
  under any flip/rotation).
  {%- if stats.source_disjoint.kept_test %} The crack export's own test split is kept as `{{ kept_test }}`.{% endif %}
  Images of two different splits never share a photo: {{ stats.source_disjoint.leaked_images }} leaked images over
  {{ stats.source_disjoint.pairs_checked }} pairs of splits.
{% endif %}

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

| configuration | split | task | images | empty masks | mask coverage (mean ± std) | objects / image |
|---|---|---|---|---|---|---|
{% for name, c in configurations.items() -%}
{% for split, tasks in c.splits.items() -%}
{% for task, s in tasks.items() -%}
| {{ name }} | {{ split }} | {{ task }} | {{ s.images }} | {{ s.empty_masks }} | {{ '%.2f' | format(100 * s.mask_coverage.mean) }}% ± {{ '%.2f' | format(100 * s.mask_coverage.std) }} | {{ '%.2f' | format(s.objects_per_image.mean) }} |
{% endfor -%}
{% endfor -%}
{% endfor %}
Files skipped while building: {{ stats.skipped.count }}.

## Leakage between splits

Roboflow exports hold augmented copies of each source photo and were split after augmenting.
{% for task, per_split in stats.leakage.items() -%}
{% for split, leak in per_split.items() -%}
- {{ task }} / {{ split }}: {{ leak[leaked_key] }} of {{ leak.images }} images share their photo with train
  ({{ leak.shared_source_id }} by source name, {{ leak.hash_only_near_duplicates }} more by perceptual hash).
{% endfor -%}
{% endfor %}
{% if stats.leakage_after_resplit -%}
{% for task, kept in stats.source_disjoint.kept_test.items() -%}
The crack export's {{ kept.images }} test images share a source photo or a perceptual hash with
{{ kept.sharing_source_or_hash }} train / validation images of task {{ task }}. So that no photo is in two splits,
the groups linked to them ({{ kept.moved_from_train }} train and {{ kept.moved_from_validation }} validation images)
join them in `{{ kept_test }}`.
{% endfor %}
In the `source-disjoint` configuration, images of split b whose photo is also in split a:

| task | splits | images | shared photo (name or hash) |
|---|---|---|---|
{% for task, per_pair in stats.leakage_after_resplit.items() -%}
{% for pair, leak in per_pair.items() -%}
| {{ task }} | {{ pair }} | {{ leak.images }} | {{ leak[leaked_key] }} |
{% endfor -%}
{% endfor %}
{% else -%}
Validation scores on the taping task therefore measure memorised photos as much as
generalisation; rebuild with `--split-by-source` for a leak-free split.
{% endif %}

## Build report

```
{{ report }}
```
"""


def _configurations(stats: dict) -> dict[str, dict]:
    """Per configuration: rows, split sizes and split statistics (stats.json of older builds had one layout)."""
    if "configurations" in stats:
        return stats["configurations"]
    sizes = {split: sum(s["images"] for s in tasks.values()) for split, tasks in stats["splits"].items()}
    return {stats.get(LAYOUT_KEY, OFFICIAL): {"rows": stats["rows"], "split_sizes": sizes, "splits": stats["splits"]}}


def configs_metadata(splits: Mapping[str, list[str]]) -> list[dict]:
    """The card's `configs:` entries: one per configuration, its Parquet files named per split."""
    return [
        {
            "config_name": name,
            **({"default": True} if name == OFFICIAL else {}),
            "data_files": [{"split": split, "path": f"{DATA_DIRS[name]}/{split}-*.parquet"} for split in names],
        }
        for name, names in splits.items()
    ]


def dataset_card(
    stats: dict,
    pretty_name: str = "Drywall QA (cracks and taping areas)",
    splits: Mapping[str, list[str]] | None = None,
    repo_id: str = "org/drywall-qa",
) -> DatasetCard:
    """The card; `splits` (configuration -> split names) adds the `configs:` metadata of the Parquet layout."""
    rows = max(c["rows"] for c in _configurations(stats).values())
    size = "n<1K" if rows < 1000 else "1K<n<10K" if rows < 10000 else "10K<n<100K"
    card_data = DatasetCardData(
        license="cc-by-4.0",
        pretty_name=pretty_name,
        task_categories=["image-segmentation"],
        size_categories=[size],
        tags=["drywall", "construction", "crack-segmentation", "clipseg", "roboflow"],
        configs=configs_metadata(splits) if splits else None,
    )
    return DatasetCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        pretty_name=pretty_name,
        repo_id=repo_id,
        vocabulary=PROMPTS,
        canonical=CANONICAL_PROMPTS,
        stats=stats,
        leaked_key=LEAKED_KEY,
        configurations=_configurations(stats),
        kept_test=KEPT_TEST,
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


def _layouts(dataset: datasets.DatasetDict | Mapping[str, datasets.DatasetDict], stats: dict) -> dict:
    """Configuration name -> DatasetDict; a lone DatasetDict is the layout stats.json says it is."""
    layouts = {stats.get(LAYOUT_KEY, OFFICIAL): dataset} if isinstance(dataset, datasets.DatasetDict) else dict(dataset)
    if OFFICIAL not in layouts:
        raise ValueError(
            "the Hub layout's default configuration is the exports' own splits, and only the source-disjoint "
            "layout was given (a `--split-by-source` build saved with --output holds just that one); rebuild with "
            "`python -m data_builders build --split-by-source ... --parquet-dir DIR` or `--push-to-hub REPO_ID`, "
            "which write both configurations"
        )
    unknown = set(layouts) - set(DATA_DIRS)
    if unknown:
        raise ValueError(f"unknown dataset configuration(s) {sorted(unknown)}; expected {sorted(DATA_DIRS)}")
    return layouts


def write_parquet(
    dataset: datasets.DatasetDict | Mapping[str, datasets.DatasetDict], stats: dict, output: Path, repo_id: str = "org/drywall-qa"
) -> list[Path]:
    """The files `push_to_hub` uploads, written locally: README.md + <data dir>/<split>-*.parquet per configuration.

    `dataset` is one layout (a DatasetDict) or {configuration: DatasetDict} as `build_layouts` returns it.
    """
    layouts = _layouts(dataset, stats)
    written = []
    for name, layout in layouts.items():
        folder = output / DATA_DIRS[name]
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.parquet"):  # a split of an earlier build must not linger in the patterns
            stale.unlink()
        for split, rows in layout.items():
            path = folder / f"{split}-00000-of-00001.parquet"
            rows.to_parquet(str(path))  # Image columns are embedded as bytes: the files stand alone
            written.append(path)
    splits = {name: list(layout) for name, layout in layouts.items()}
    dataset_card(stats, splits=splits, repo_id=repo_id).save(output / "README.md")
    return written + [output / "README.md"]


def push_to_hub(
    dataset: datasets.DatasetDict | Mapping[str, datasets.DatasetDict], stats: dict, repo_id: str, private: bool = False
) -> None:
    """`write_parquet`'s files, uploaded in one commit (token from `hf auth login`).

    Uploading the local layout, rather than `DatasetDict.push_to_hub` per configuration, keeps the
    Hub copy identical to what `write_parquet` writes and the tests load offline.
    """
    layouts = _layouts(dataset, stats)  # refuse before creating a repo
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drywall-qa-hub-") as folder:
        write_parquet(layouts, stats, Path(folder), repo_id=repo_id)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            delete_patterns=[f"{d}/*.parquet" for d in DATA_DIRS.values()],  # shards of an earlier push
            commit_message="Upload drywall-qa (Parquet, both configurations) and dataset card",
        )
