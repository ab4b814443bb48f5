"""What one binary mask measures: coverage, separate regions, and for cracks skeleton length and widths.

Every measurement goes through scikit-image / SciPy, not hand-written pixel loops:
- regions: `skimage.measure.label`, 8-connected (pixels touching at a corner are one region, as a
  thin diagonal crack is drawn);
- length: the skeleton (`skimage.morphology.skeletonize`) as a pixel graph (`skimage.graph.pixel_graph`,
  8-connected, each step 1 px or sqrt(2) px) summed over its edges. Such a chain overestimates a
  straight crack running between the axes and the diagonals by up to 8 % (22.5 degrees; none at 0
  and 45), and a skeleton ends about a pixel short of each end of the crack;
- width: twice the Euclidean distance to the background (`scipy.ndimage.distance_transform_edt`) at
  each skeleton pixel, less one pixel, because the distance runs to the centre of the first
  background pixel, half a pixel beyond the edge: a 3 px wide line measures 3. Widths come in whole
  pixels on the axes; an even width reads one pixel low.

The speck filter (`min_region_px`) drops regions smaller than that many pixels before anything is
measured (8-connected regions of `skimage.measure.label`), so that a model's scattered specks
do not become "regions" or crack length; the mask files are never changed. The default,
`DEFAULT_MIN_REGION_PX` = 16, comes from the annotated masks of both Roboflow exports in ../shared/data
(640x640; `python benchmarks/region_sizes.py`): of their 2788 crack and 1256 joint regions, 55 and 15 are
under 16 px, together 0.0006 % of the annotated pixels, and each of those 55 crack regions is a stray bit
of a larger annotated crack, cut off where its polygon is thinner than a pixel: dropping one never drops a
crack. Between 16 and 100 px lie another 41 crack regions, so a larger default would start to drop regions
annotators drew.

Widths and lengths are in pixels; `to_mm` scales them with a known `mm_per_pixel`. `severity`
places a width in mm into bands (`SEVERITY_BANDS`). Nothing here imports torch.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage
from skimage.graph import pixel_graph
from skimage.measure import label
from skimage.morphology import skeletonize

from ..metrics import as_bool

# Band edges in mm: below 0.1 hairline, 0.1-0.3 fine, 0.3-0.7 medium, 0.7 and up wide. These follow the
# hairline / fine / medium / wide bands inspection manuals give for concrete (hairline: barely visible,
# about 0.1 mm); no standard sets them for gypsum board, so a site's own are one flag away (--severity_bands).
SEVERITY_EDGES_MM = (0.1, 0.3, 0.7)
SEVERITY_NAMES = ("hairline", "fine", "medium", "wide")
DEFAULT_MIN_REGION_PX = 16  # regions smaller than this are specks (how it was chosen: the module doc)


@dataclass(frozen=True)
class Measurement:
    """One mask's numbers. Lengths and widths are in pixels and are None for a mask not measured as a crack."""

    coverage: float  # foreground pixels / all pixels
    regions: int  # 8-connected foreground components
    length_px: float | None = None  # skeleton length
    max_width_px: float | None = None  # largest width along the skeleton
    mean_width_px: float | None = None  # mean width along the skeleton
    min_region_px: int = 0  # the speck filter the numbers were measured with (recorded in the journal)

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def skeleton_length(skeleton: np.ndarray) -> float:
    """Total length of a one-pixel-wide skeleton: the sum of its 8-connected pixel graph's edges."""
    if not skeleton.any():
        return 0.0
    graph, _ = pixel_graph(skeleton, connectivity=2)
    return float(graph.sum() / 2)  # the graph is symmetric: every edge is stored twice


def widths_along(mask: np.ndarray, skeleton: np.ndarray) -> np.ndarray:
    """The foreground's width (px) at each skeleton pixel: 2 x distance to the background - 1 (see the module doc)."""
    distance = ndimage.distance_transform_edt(mask)
    return 2.0 * distance[skeleton] - 1.0


def without_specks(mask: np.ndarray, min_region_px: int) -> tuple[np.ndarray, int]:
    """The mask as booleans less its 8-connected regions of fewer than `min_region_px` pixels, and how many
    regions are left (one labelling for both: dropping whole regions leaves the others as they were)."""
    binary = as_bool(mask)  # the package's one foreground rule (metrics)
    labels, count = label(binary, connectivity=2, return_num=True)
    if min_region_px <= 1:
        return binary, count
    # label + bincount rather than remove_small_objects, whose size parameter changed meaning in
    # scikit-image 0.26 (min_size, exclusive, became max_size, inclusive): this reads the same on every version
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_region_px
    keep[0] = False  # the background
    if keep[1:].all():  # no specks: the mask as it was, without a pass over the labels (half the time)
        return binary, count
    return keep[labels], int(keep.sum())


def around_foreground(binary: np.ndarray) -> tuple[slice, slice]:
    """The foreground's bounding box and a one-pixel margin (within the image). The regions, the skeleton and
    the distances to the background inside it are the whole mask's: no region leaves the box, thinning looks at
    3x3 neighbourhoods, and no foreground pixel's nearest background pixel lies beyond the margin, which is all
    background. A crack's box is a quarter of the photo in the median real mask, and each step takes time in
    proportion to the area."""
    rows, columns = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    return slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(columns[0] - 1, 0), columns[-1] + 2)


def measure(mask: np.ndarray, crack: bool = False, min_region_px: int = DEFAULT_MIN_REGION_PX) -> Measurement:
    """Coverage and regions of any mask, once regions under `min_region_px` pixels are dropped; with `crack`,
    also the skeleton length and largest and mean width."""
    binary = as_bool(mask)
    size = binary.size
    if binary.any():  # the speck filter inside the foreground's box: the same regions, a fraction of the pixels
        binary, regions = without_specks(binary[around_foreground(binary)], min_region_px)
    else:
        regions = 0
    found = Measurement(coverage=float(np.count_nonzero(binary) / size) if size else 0.0, regions=regions,
                        min_region_px=min_region_px)
    if not crack:
        return found
    if regions == 0:
        return replace(found, length_px=0.0, max_width_px=0.0, mean_width_px=0.0)
    binary = binary[around_foreground(binary)]  # the box again once specks are gone: the arrays measured before
    skeleton = skeletonize(binary)
    widths = widths_along(binary, skeleton)
    return replace(found, length_px=skeleton_length(skeleton), max_width_px=float(widths.max()) if widths.size else 0.0,
                   mean_width_px=float(widths.mean()) if widths.size else 0.0)


def to_mm(pixels: float | None, mm_per_pixel: float | None) -> float | None:
    """A length in pixels in millimetres, or None when either is unknown."""
    return None if pixels is None or mm_per_pixel is None else pixels * mm_per_pixel


def severity(width_mm: float | None, edges_mm: tuple[float, ...] = SEVERITY_EDGES_MM,
             names: tuple[str, ...] = SEVERITY_NAMES) -> str:
    """The band of a crack width in mm ("" when the width is unknown or there is no crack):
    `names[i]` for widths in [edges[i-1], edges[i])."""
    if width_mm is None or width_mm <= 0:
        return ""
    return names[bisect.bisect_right(edges_mm, width_mm)]


def check_severity_edges(edges_mm: tuple[float, ...], names: tuple[str, ...] = SEVERITY_NAMES) -> tuple[float, ...]:
    """The band edges if they are positive, strictly increasing and one fewer than the band names."""
    if len(edges_mm) != len(names) - 1:
        raise ValueError(f"--severity_bands needs {len(names) - 1} widths in mm (the upper edges of "
                         f"{', '.join(names[:-1])}), got {len(edges_mm)}")
    if any(edge <= 0 for edge in edges_mm) or any(b <= a for a, b in zip(edges_mm, edges_mm[1:])):
        raise ValueError(f"--severity_bands must be positive and increasing, got {','.join(map(str, edges_mm))}")
    return tuple(edges_mm)
