"""How large the regions of the annotated masks are: where the report's speck filter (--min_region_px) comes from.

Rasterises every annotation of the Roboflow exports in ../shared/data (as the dataset build draws them,
`data_builders.rasterize.draw_mask`), labels each mask's 8-connected regions as the report does, and prints
how many regions, and what share of the annotated pixels, a filter of N px would drop.

    python benchmarks/region_sizes.py [EXPORT ...]   (default: the cracks and drywall-join-detect exports)

2026-12-04: 1877 crack photos (2788 regions) and 1022 joint photos (1256 regions), 640x640. Under 16 px:
55 crack regions (2.0 %) and 15 joint regions, 0.0006 % of the annotated pixels; each of the 55 crack
regions is a stray bit of a larger annotated crack, cut off where its polygon is thinner than a pixel
(checked by drawing each polygon alone). From 16 to 100 px another 41 crack regions and no joint region.
Hence DEFAULT_MIN_REGION_PX = 16: it drops stray bits (and a model's specks), never a whole annotated
crack, and stays below the sizes where annotated regions grow in number.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import label

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_builders.rasterize import draw_mask  # noqa: E402
from data_builders.roboflow import read_export  # noqa: E402

EXPORTS = [REPO.parent / "shared" / "data" / "cracks", REPO.parent / "shared" / "data" / "drywall-join-detect"]
CUTS = (4, 8, 16, 25, 32, 50, 64, 100)


def region_areas(export: Path) -> tuple[int, np.ndarray]:
    """(photos, the pixel area of every 8-connected region of every annotated mask) of one export."""
    scan, _ = read_export(export)
    areas = []
    for annotation in scan.annotations:
        size = annotation.annotated_size
        if annotation.normalized or size is None:
            with Image.open(annotation.image_path) as image:
                size = image.size
        mask = np.asarray(draw_mask(annotation.shapes, size, annotation.normalized)) > 0
        areas.append(np.bincount(label(mask, connectivity=2).ravel())[1:])
    return len(scan.annotations), np.concatenate(areas) if areas else np.zeros(0, int)


def main() -> int:
    for export in [Path(name) for name in sys.argv[1:]] or EXPORTS:
        photos, areas = region_areas(export)
        print(f"{export.name}: {photos} photos, {len(areas)} regions, median {np.median(areas):.0f} px")
        for cut in CUTS:
            small = areas < cut
            print(f"  under {cut:3d} px: {small.sum():4d} regions ({small.mean():6.2%}), "
                  f"{areas[small].sum() / areas.sum():.4%} of the annotated pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
