"""Train/validation leakage: Roboflow exports hold augmented copies of each source photo.

Two signals: the source photo named in the file (`source_id`, the name before `.rf.`), and a
64-bit DCT perceptual hash that also catches renamed copies. The hash of an image is compared
with all 8 flips/90-degree rotations of the other, so mirrored and rotated copies match too.
`group_ids` joins both signals into connected groups, the unit `--split-by-source` keeps on one
side of a split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from clipseg_drywall.data import LEAKED_KEY, pair_name

HASH_SIZE = 8
THUMB_SIZE = 32
# Images this flat hash to noise; leave them out of the perceptual check (see SOURCES.md).
MIN_THUMB_STD = 8.0


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(THUMB_SIZE)
_BITS = 1 << np.arange(HASH_SIZE * HASH_SIZE, dtype=np.uint64)


def _thumbnail(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            image.draft("L", (THUMB_SIZE * 4, THUMB_SIZE * 4))  # JPEG decodes at 1/8 scale: fast
            return np.asarray(image.convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), dtype=np.float64)
    except (OSError, Image.DecompressionBombError, SyntaxError):
        return None  # the build reports unreadable images; here they just have no hash


def _phash(thumb: np.ndarray) -> np.uint64:
    low = (_DCT @ thumb @ _DCT.T)[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = low > np.median(low[1:])
    return np.uint64((bits * _BITS).sum())


def dihedral_hashes(path: Path) -> np.ndarray | None:
    """The hashes of the image under the 8 flips/rotations, or None for an unreadable/flat image."""
    thumb = _thumbnail(path)
    if thumb is None or thumb.std() < MIN_THUMB_STD:
        return None
    variants = [np.rot90(t, k) for t in (thumb, thumb[:, ::-1]) for k in range(4)]
    return np.array([_phash(v) for v in variants], dtype=np.uint64)


def hash_images(paths: Sequence[Path], desc: str = "hashing images") -> list[np.ndarray | None]:
    return [dihedral_hashes(p) for p in tqdm(paths, desc=desc, unit="img", leave=False)]


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2: ~80x faster, and all-pairs grouping runs it n times
        return np.bitwise_count(values)
    bytes_view = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(bytes_view, axis=-1).sum(axis=-1)


def near_duplicate_pairs(
    hashes_a: Sequence[np.ndarray | None], hashes_b: Sequence[np.ndarray | None], max_distance: int
) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) whose images match under some flip/rotation."""
    valid_b = [j for j, h in enumerate(hashes_b) if h is not None]
    if not valid_b:
        return []
    plain_b = np.array([hashes_b[j][0] for j in valid_b], dtype=np.uint64)
    pairs = []
    for i, h in enumerate(hashes_a):
        if h is None:
            continue
        distance = _popcount(h[:, None] ^ plain_b[None, :]).min(axis=0)
        pairs += [(i, valid_b[j]) for j in np.flatnonzero(distance <= max_distance)]
    return pairs


def group_ids(source_ids: Sequence[str], links: Sequence[tuple[int, int]]) -> list[int]:
    """Connected groups of items sharing a source_id or joined by a link (union-find)."""
    parent = list(range(len(source_ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[str, int] = {}
    for i, source in enumerate(source_ids):
        first_of.setdefault(source, i)
        parent[find(i)] = find(first_of[source])
    for i, j in links:
        parent[find(i)] = find(j)
    return [find(i) for i in range(len(source_ids))]


def leakage_report(
    split_of: Sequence[str],
    source_ids: Sequence[str],
    hashes: Sequence[np.ndarray | None],
    max_distance: int,
) -> dict[str, dict[str, int]]:
    """For each non-train split: its images whose photo is also in train, by name and by hash."""
    train = [i for i, s in enumerate(split_of) if s == "train"]
    train_sources = defaultdict(int)
    for i in train:
        train_sources[source_ids[i]] += 1
    report = {}
    for split in sorted(set(split_of) - {"train"}):
        members = [i for i, s in enumerate(split_of) if s == split]
        by_name = [i for i in members if source_ids[i] in train_sources]
        pairs = near_duplicate_pairs([hashes[i] for i in members], [hashes[i] for i in train], max_distance)
        by_hash = {members[a] for a, _ in pairs}
        report[split] = {
            "images": len(members),
            "shared_source_id": len(by_name),
            "train_images_sharing_source_id": sum(
                train_sources[s] for s in {source_ids[i] for i in by_name}
            ),
            "hash_near_duplicates": len(by_hash),
            "hash_only_near_duplicates": len(by_hash - set(by_name)),
            LEAKED_KEY: len(by_hash | set(by_name)),
        }
    return report


def linked_by_hash(a: Sequence[int], b: Sequence[int], hashes: Sequence[np.ndarray | None], max_distance: int) -> set[int]:
    """Members of `b` that match some member of `a` by hash, checked in both directions."""
    forward = near_duplicate_pairs([hashes[i] for i in a], [hashes[j] for j in b], max_distance)
    backward = near_duplicate_pairs([hashes[j] for j in b], [hashes[i] for i in a], max_distance)
    return {b[j] for _, j in forward} | {b[j] for j, _ in backward}


def pairwise_leakage(
    split_of: Sequence[str],
    source_ids: Sequence[str],
    hashes: Sequence[np.ndarray | None],
    max_distance: int,
    order: Sequence[str] = (),
) -> dict[str, dict[str, int]]:
    """For every pair of splits ("b vs a", a listed first in `order`): the images of b whose photo is in a."""
    present = [s for s in order if s in split_of] + sorted(set(split_of) - set(order))
    members = {s: [i for i, x in enumerate(split_of) if x == s] for s in present}
    report = {}
    for k, a in enumerate(present):
        sources_a = {source_ids[i] for i in members[a]}
        for b in present[k + 1 :]:
            by_name = {i for i in members[b] if source_ids[i] in sources_a}
            by_hash = linked_by_hash(members[a], members[b], hashes, max_distance)
            report[pair_name(b, a)] = {
                "images": len(members[b]),
                "shared_source_id": len(by_name),
                "hash_near_duplicates": len(by_hash),
                "hash_only_near_duplicates": len(by_hash - by_name),
                LEAKED_KEY: len(by_hash | by_name),
            }
    return report
