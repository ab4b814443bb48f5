"""Annotations to masks and images to RGB: the one place that fixes the pixel semantics.

Mask rules (Pillow `ImageDraw` semantics, mode "L", 0 background, 255 foreground):
- the mask is the union of all objects of the image; an image without objects gives an empty mask;
- polygons are filled with `ImageDraw.polygon(points, fill=255, outline=255)`, vertices clipped to
  [0, width] x [0, height];
- boxes (x0, y0, x1, y1) are drawn with `ImageDraw.rectangle([x0, y0, x1, y1], fill=255)` after
  clipping to [0, width] x [0, height]: Pillow's end points are inclusive, so a COCO box
  [x, y, w, h] covers w + 1 columns and a degenerate 0- to 2-px box still marks its pixels. This
  is what every Pillow-based Roboflow converter draws, so masks agree with theirs;
- YOLO coordinates (fractions) are multiplied by the stored image's width and height first.

Orientation: Roboflow annotates the pixels as stored in the file, so masks are drawn on the stored
pixel grid and the EXIF orientation tag is *not* applied; the image is written without that tag so
that image and mask line up in every viewer. The one exception: when the annotation records a size
that only matches the EXIF-rotated image, the annotation was made on the rotated view and the image
is rotated (`ImageOps.exif_transpose`) before drawing.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageOps

from clipseg_drywall.images import EXIF_ORIENTATION, ImageLoadError, read_image_file, to_rgb

from .roboflow import Annotation, Shape

__all__ = ["EXIF_ORIENTATION", "ImageReadError", "draw_mask", "load_annotated_image", "png_bytes", "rasterize", "to_rgb"]

ImageReadError = ImageLoadError  # the builder's name for it: an image file the build skips


def load_annotated_image(annotation: Annotation) -> tuple[Image.Image, bytes | None]:
    """The decoded RGB image on the grid the annotation refers to, and the file's bytes when they
    can be stored unchanged (RGB, no orientation tag): no re-encoding, no JPEG generation loss."""
    image, data = read_image_file(annotation.image_path)
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    rotated = orientation != 1 and _annotated_on_rotated_view(annotation, image, orientation)
    if rotated:
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
            draw.rectangle(
                [_clip(x0 * sx, width), _clip(y0 * sy, height), _clip(x1 * sx, width), _clip(y1 * sy, height)],
                fill=255,
            )
    return mask


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rasterize(annotation: Annotation) -> tuple[Image.Image, bytes | None, Image.Image]:
    """(RGB image, its original bytes if reusable, mask) for one annotation."""
    image, data = load_annotated_image(annotation)
    return image, data, draw_mask(annotation.shapes, image.size, annotation.normalized)

