"""Build statistics: printed after a build, saved as `stats.json`, and quoted by the dataset card."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from .drywall_qa import BuildReport


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()), "max": float(array.max())}


def compute_statistics(report: BuildReport) -> dict:
    by_split_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in report.rows:
        by_split_task[row.split][row.task].append(row)
    splits = {}
    for split, tasks in by_split_task.items():
        splits[split] = {
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
    reasons = Counter(skip.reason.split(":")[0] for skip in report.skipped)
    return {
        "rows": len(report.rows),
        "splits": splits,
        "formats": report.formats,
        "files_seen": report.files_seen,
        "skipped": {
            "count": len(report.skipped),
            "by_reason": dict(reasons.most_common()),
            "files": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
        },
        "invalid_objects": [{"path": str(s.path), "reason": s.reason} for s in report.invalid_objects],
        "leakage": report.leakage,
        "leakage_after_resplit": report.leakage_after_resplit,
    }


def format_statistics(stats: dict, max_files: int | None = None) -> str:
    """The human report, in the manner of the original study's dataset summary."""
    lines = [f"rows: {stats['rows']}  (files seen: {stats['files_seen']})"]
    for split, tasks in stats["splits"].items():
        for task, s in tasks.items():
            coverage, objects = s["mask_coverage"], s["objects_per_image"]
            lines.append(
                f"{split:>10} {task:<7} images {s['images']:>5}  empty masks {s['empty_masks']:>3}  "
                f"coverage {100 * coverage['mean']:.2f}% ± {100 * coverage['std']:.2f} "
                f"[{100 * coverage['min']:.2f}, {100 * coverage['max']:.2f}]  "
                f"objects/image {objects['mean']:.2f} (max {objects['max']:.0f})"
            )
            prompts = ", ".join(f"{p!r}: {n}" for p, n in s["prompts"].items())
            lines.append(f"{'':>18} prompts {prompts}")
    skipped = stats["skipped"]
    lines.append(f"skipped files: {skipped['count']}")
    lines += [f"  {reason}: {n}" for reason, n in skipped["by_reason"].items()]
    lines += [f"    {f['path']}: {f['reason']}" for f in skipped["files"][:max_files]]
    if stats["invalid_objects"]:
        lines.append(f"invalid objects dropped (their images kept): {len(stats['invalid_objects'])}")
        lines += [f"    {f['path']}: {f['reason']}" for f in stats["invalid_objects"][:max_files]]
    for title, key in (("leakage vs train", "leakage"), ("leakage after --split-by-source", "leakage_after_resplit")):
        for task, per_split in stats[key].items():
            for split, leak in per_split.items():
                lines.append(
                    f"{title}: {task} {split}: {leak['leaked_either_way']} of {leak['images']} images share their "
                    f"photo with train ({leak['shared_source_id']} by source name, "
                    f"{leak['hash_only_near_duplicates']} more by perceptual hash)"
                )
    return "\n".join(lines)
