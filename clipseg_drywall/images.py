"""Image loading for every path of the package: one RGB conversion, one EXIF policy switch.

Inference shows the model what a viewer shows (EXIF orientation applied). The dataset builder
draws masks on the stored pixel grid, because Roboflow annotates the pixels as stored, so it loads
with `apply_exif_orientation=False`. Nothing here imports more than Pillow and numpy.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# What a folder of photos may hold (predict CLI, export readers).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112
ImageInput = Image.Image | np.ndarray | str | Path


class ImageLoadError(ValueError):
    """An input that is not a readable image (the message names the file)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode Pillow opens: L, LA, P, RGBA, CMYK, 16-bit and 32-bit integer greyscale."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; scale the full range instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.round(values * (255.0 / top)).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.round(values.clip(0, 1) * 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as an image viewer shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, name: str | Path) -> Image.Image:
    """The fully decoded image of a file's bytes, as stored (no conversion, no rotation).

    Decoding now means a truncated file fails here, with `name` in the message.
    """
    buffer = io.BytesIO(data)
    try:
        image = Image.open(buffer)
        image.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        reason = str(error).replace(" " + repr(buffer), "")
        raise ImageLoadError(f"{name}: not a readable image ({reason}); pass a JPEG/PNG/TIFF/... file") from error
    return image


def read_image_file(path: str | Path) -> tuple[Image.Image, bytes]:
    """(decoded image as stored, the file's bytes); `ImageLoadError` names the file on any failure."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageLoadError(f"{path}: not a readable image ({error.strerror or error})") from error
    return decode_image(data, path), data


def load_image(image: ImageInput, apply_exif_orientation: bool = True) -> Image.Image:
    """An RGB image from a path, a PIL image or an array, in any mode (RGBA, L, P, I;16, CMYK, ...).

    `apply_exif_orientation`: rotate as the EXIF tag says, as a viewer shows it (inference), or
    keep the stored pixel grid (annotations drawn on it).
    """
    owned = isinstance(image, (str, Path))  # decoded here: nobody else holds it
    if isinstance(image, (str, Path)):
        image, _ = read_image_file(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, a numpy array or a path, got {type(image).__name__}")
    if apply_exif_orientation and owned:  # in place: exif_transpose would copy every photo, rotated or not
        ImageOps.exif_transpose(image, in_place=True)
    elif apply_exif_orientation:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)
