"""Annotations to masks and images to RGB: the one place that fixes the pixel semantics.

Mask rules (Pillow `ImageDraw` semantics, mode "L", 0 background, 255 foreground):
- the mask is the union of all objects of the image; an image without objects gives an empty mask;
- polygons are filled with `ImageDraw.polygon(points, fill=255, outline=255)`, vertices clipped to
  [0, width] x [0, height];
- boxes (x0, y0, x1, y1) are continuous pixel-edge coordinates: they cover the pixels
  floor(x0) .. ceil(x1) - 1 (at least one pixel, so a 0.5-px box still marks its pixel), clipped to
  the image, drawn with `ImageDraw.rectangle` (whose end points are inclusive);
- YOLO coordinates (fractions) are multiplied by the stored image's width and height first.

Orientation: Roboflow annotates the pixels as stored in the file, so masks are drawn on the stored
pixel grid and the EXIF orientation tag is *not* applied; the image is written without that tag so
that image and mask line up in every viewer. The one exception: when the annotation records a size
that only matches the EXIF-rotated image, the annotation was made on the rotated view and the image
is rotated (`ImageOps.exif_transpose`) before drawing.
"""

from __future__ import annotations

import io
import math
import numpy as np
from PIL import Image, ImageDraw, ImageOps

from .exports import Annotation, Shape

EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    pass


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


def load_image(annotation: Annotation) -> tuple[Image.Image, bytes | None]:
    """The decoded RGB image on the grid the annotation refers to, and the file's bytes when they
    can be stored unchanged (RGB, no orientation tag): no re-encoding, no JPEG generation loss."""
    path = annotation.image_path
    try:
        data = path.read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()  # decode fully: a truncated file fails here, not in training
    except (OSError, Image.DecompressionBombError, SyntaxError) as error:
        raise ImageReadError(f"{path}: unreadable image ({error})") from error
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation != 1 and _annotated_on_rotated_view(annotation, image, orientation):
        image = ImageOps.exif_transpose(image)
    keep_bytes = image.mode == "RGB" and orientation == 1 and image.format in ("JPEG", "PNG")
    return to_rgb(image), (data if keep_bytes else None)


def _annotated_on_rotated_view(annotation: Annotation, image: Image.Image, orientation: int) -> bool:
    if annotation.annotated_size is None or orientation not in (5, 6, 7, 8):
        return False
    width, height = image.size
    return annotation.annotated_size == (height, width) != (width, height)


def _clip(value: float, high: int) -> float:
    return min(max(value, 0.0), float(high))


def _box_pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = box
    first_x, first_y = max(math.floor(x0), 0), max(math.floor(y0), 0)
    last_x = min(max(math.ceil(x1) - 1, math.floor(x0)), width - 1)
    last_y = min(max(math.ceil(y1) - 1, math.floor(y0)), height - 1)
    if first_x > last_x or first_y > last_y:
        return None  # entirely outside the image
    return first_x, first_y, last_x, last_y


def draw_mask(shapes: list[Shape], size: tuple[int, int], normalized: bool = False) -> Image.Image:
    """The union of `shapes` as a mode-L mask of `size` (width, height), values {0, 255}."""
    width, height = size
    sx, sy = (width, height) if normalized else (1, 1)
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for shape in shapes:
        if shape.polygon is not None:
            points = [(_clip(x * sx, width), _clip(y * sy, height)) for x, y in shape.polygon]
            draw.polygon(points, fill=255, outline=255)
        elif shape.box is not None:
            x0, y0, x1, y1 = shape.box
            pixels = _box_pixels((x0 * sx, y0 * sy, x1 * sx, y1 * sy), width, height)
            if pixels is not None:
                draw.rectangle(pixels, fill=255)
    return mask


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rasterize(annotation: Annotation) -> tuple[Image.Image, bytes | None, Image.Image]:
    """(RGB image, its original bytes if reusable, mask) for one annotation."""
    image, data = load_image(annotation)
    return image, data, draw_mask(annotation.shapes, image.size, annotation.normalized)

