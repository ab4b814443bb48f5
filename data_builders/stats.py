"""Build statistics: printed after a build, saved as `stats.json`, and quoted by the dataset card."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from clipseg_drywall.data import LAYOUT_KEY, LEAKAGE_KEY, LEAKED_KEY, OFFICIAL_LAYOUT, RESPLIT_LEAKAGE_KEY

from .drywall_qa import BuildReport, RowInfo
from .splits import KEPT_TEST


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()), "max": float(array.max())}


def _split_statistics(rows: list[RowInfo]) -> dict[str, dict[str, dict]]:
    by_split_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_split_task[row.split][row.task].append(row)
    return {
        split: {
            task: {
                "images": len(rows),
                "empty_masks": sum(r.coverage == 0 for r in rows),
                "mask_coverage": _summary([r.coverage for r in rows]),
                "objects_per_image": _summary([r.objects for r in rows]),
                "objects_histogram": dict(sorted(Counter(r.objects for r in rows).items())),
                "prompts": dict(Counter(r.prompt for r in rows).most_common()),
            }
            for task, rows in sorted(tasks.items())
        }
        for split, tasks in by_split_task.items()
    }


def _configuration(rows: list[RowInfo]) -> dict:
    splits = _split_statistics(rows)
    sizes = {split: sum(s["images"] for s in tasks.values()) for split, tasks in splits.items()}
    return {"rows": len(rows), "split_sizes": sizes, "splits": splits}


def _split_check(report: BuildReport) -> dict | None:
    """The source-disjoint split's settings, how the export's test split was kept, and the leak total."""
    if not report.source_split:
        return None
    pairs = [leak for per_pair in report.leakage_after_resplit.values() for leak in per_pair.values()]
    return {
        "options": report.split_options,
        "kept_test_split": KEPT_TEST,
        "kept_test": report.kept_test,
        "pairs_checked": len(pairs),
        "leaked_images": sum(leak[LEAKED_KEY] for leak in pairs),
    }


def compute_statistics(report: BuildReport) -> dict:
    """Statistics of the layout `build` returned ("splits"), with the split counts of every layout built."""
    configurations = {name: _configuration(report.rows_of(name)) for name in report.layouts}
    reasons = Counter(skip.reason.split(":")[0] for skip in report.skipped)
    return {
        "rows": len(report.rows_of(report.layout)),
        LAYOUT_KEY: report.layout,
        "splits": configurations[report.layout]["splits"],
        "configurations": configurations,
        "formats": report.formats,
        "files_seen": report.files_seen,
        "skipped": {
            "count": len(report.skipped),
            "by_reason": dict(reasons.most_common()),
            "files": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
        },
        "invalid_objects": [{"path": str(s.path), "reason": s.reason} for s in report.invalid_objects],
        LEAKAGE_KEY: report.leakage,
        RESPLIT_LEAKAGE_KEY: report.leakage_after_resplit,
        "source_disjoint": _split_check(report),
    }


def _split_lines(splits: dict) -> list[str]:
    lines = []
    for split, tasks in splits.items():
        for task, s in tasks.items():
            coverage, objects = s["mask_coverage"], s["objects_per_image"]
            lines.append(
                f"{split:>13} {task:<7} images {s['images']:>5}  empty masks {s['empty_masks']:>3}  "
                f"coverage {100 * coverage['mean']:.2f}% ± {100 * coverage['std']:.2f} "
                f"[{100 * coverage['min']:.2f}, {100 * coverage['max']:.2f}]  "
                f"objects/image {objects['mean']:.2f} (max {objects['max']:.0f})"
            )
            prompts = ", ".join(f"{p!r}: {n}" for p, n in s["prompts"].items())
            lines.append(f"{'':>21} prompts {prompts}")
    return lines


def _leakage_lines(stats: dict) -> list[str]:
    lines = []
    for task, per_split in stats[LEAKAGE_KEY].items():
        for split, leak in per_split.items():
            lines.append(
                f"leakage vs train: {task} {split}: {leak[LEAKED_KEY]} of {leak['images']} images share their "
                f"photo with train ({leak['shared_source_id']} by source name, "
                f"{leak['hash_only_near_duplicates']} more by perceptual hash)"
            )
    for task, kept in ((stats.get("source_disjoint") or {}).get("kept_test") or {}).items():
        lines.append(
            f"{KEPT_TEST}: {task}: the export's {kept['images']} test images share a source or hash with "
            f"{kept['sharing_source_or_hash']} train/validation images; their linked groups "
            f"({kept['moved_from_train']} from train, {kept['moved_from_validation']} from validation) "
            f"moved to {KEPT_TEST} so that no photo is in two splits"
        )
    for task, per_pair in stats.get(RESPLIT_LEAKAGE_KEY, {}).items():
        for pair, leak in per_pair.items():
            lines.append(
                f"leakage after --split-by-source: {task} {pair}: {leak[LEAKED_KEY]} of {leak['images']} "
                f"images share their photo ({leak['shared_source_id']} by source name, "
                f"{leak['hash_only_near_duplicates']} more by perceptual hash)"
            )
    return lines


def format_statistics(stats: dict, max_files: int | None = None) -> str:
    """The human report, in the manner of the original study's dataset summary."""
    lines = [f"rows: {stats['rows']}  (files seen: {stats['files_seen']})"]
    configurations = stats.get("configurations") or {stats.get(LAYOUT_KEY, OFFICIAL_LAYOUT): {"splits": stats["splits"]}}
    for name, configuration in configurations.items():
        if len(configurations) > 1:
            sizes = ", ".join(f"{split} {n}" for split, n in configuration["split_sizes"].items())
            lines.append(f"configuration {name!r}: {sizes}")
        lines += _split_lines(configuration["splits"])
    skipped = stats["skipped"]
    lines.append(f"skipped files: {skipped['count']}")
    lines += [f"  {reason}: {n}" for reason, n in skipped["by_reason"].items()]
    lines += [f"    {f['path']}: {f['reason']}" for f in skipped["files"][:max_files]]
    if stats["invalid_objects"]:
        lines.append(f"invalid objects dropped (their images kept): {len(stats['invalid_objects'])}")
        lines += [f"    {f['path']}: {f['reason']}" for f in stats["invalid_objects"][:max_files]]
    return "\n".join(lines + _leakage_lines(stats))
