"""The mask file: a {0, 255} mask as an 8-bit single-channel PNG, encoded here in a few lines of deflate.

Pillow's PNG encoder tries three or four row filters on every row and keeps the one with the smallest sum
(libpng's heuristic), then calls deflate once per row, and it has no option to turn that search off. On a
640x640 mask that search is most of the cost. A mask is runs of 0 and 255, which zlib's run-length
strategy codes as well without any filter, so here every row gets filter type 0 ("None") and the image is
deflated in one call: about 2x faster than Pillow at the same zlib settings, files a few percent smaller,
and any PNG reader decodes the same pixels (tests/test_mask_files.py checks with Pillow). With zlib-ng (a
dependency; zlib where its wheel is missing) the deflate itself is 3-8x faster again.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

try:  # zlib-ng: the same deflate format, 3-8x faster than zlib at these settings on masks (docs/scaling.md)
    from zlib_ng import zlib_ng as deflate_library
except ImportError:  # an environment without its wheel: zlib (the same bytes on every mask tried, tests/)
    deflate_library = zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# bit depth 8, colour type 0 (greyscale), compression 0 (deflate), filter method 0, no interlace
_GREYSCALE_8 = (8, 0, 0, 0, 0)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """The PNG file's bytes of a (height, width) uint8 mask (any values; masks hold 0 and 255)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8 or 0 in mask.shape:
        raise ValueError(f"a mask PNG needs a non-empty (height, width) uint8 array, got {mask.dtype} {mask.shape}")
    height, width = mask.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # each row's filter type: None
    rows[:, 1:] = mask
    # level 1 with the run-length strategy: as small as level 6 on masks, and several times faster
    compressor = deflate_library.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    pixels = compressor.compress(rows) + compressor.flush()
    return b"".join((_SIGNATURE, _chunk(b"IHDR", struct.pack(">II5B", width, height, *_GREYSCALE_8)),
                     _chunk(b"IDAT", pixels), _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, and the CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
