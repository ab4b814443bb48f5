"""Per-photo scale: `--scale_file`, a CSV of `photo,mm_per_pixel`, for site photos taken at different distances.

A photo is named by its file name or by its path as the report lists it. Photos the file does not list stay
in pixels (no severity band, no rule in mm holds for them), and the page names them. A name that matches no
photo of the report is refused, since it is most likely a typo that would leave a photo in pixels unnoticed.
Nothing here imports torch.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .findings import named_photo, photo_index

SCALE_COLUMNS = ("photo", "mm_per_pixel")


def read_scale_file(path: Path) -> dict[str, float]:
    """{photo name: mm per pixel} of a scale file; a ValueError names the file, the line and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--scale_file {path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(handle)
        if missing := [column for column in SCALE_COLUMNS if column not in (reader.fieldnames or [])]:
            raise ValueError(f"--scale_file {path}: no {' or '.join(missing)} column (expected the header "
                             f"{','.join(SCALE_COLUMNS)})")
        scales: dict[str, float] = {}
        for row in reader:
            where = f"--scale_file {path} line {reader.line_num}"
            name, text = (row["photo"] or "").strip(), (row["mm_per_pixel"] or "").strip()
            if name in scales:
                raise ValueError(f"{where}: {name} is listed twice")
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{where}: mm_per_pixel {text!r} is not a number") from None
            if not name or not value > 0:
                raise ValueError(f"{where}: give a photo and a positive mm_per_pixel, got {name!r}, {text!r}")
            scales[name] = value
    return scales


def check_scales(scales: dict[str, float], photos: Sequence[str], source: str) -> dict[str, float]:
    """The scales keyed by the report's photos; a name that matches no photo, or more than one, is refused."""
    index, keyed = photo_index(photos), {}
    for name, value in scales.items():
        try:
            keyed[named_photo(name, index)] = value
        except ValueError as error:
            raise ValueError(f"--scale_file {source}: {error}") from None
    return keyed


def unscaled(photos: Sequence[str], arguments: dict) -> list[str]:
    """The photos a scale file leaves in pixels ([] with one scale for all, or none at all)."""
    scales = arguments.get("scales")
    return [] if scales is None else [photo for photo in photos if photo not in scales]
