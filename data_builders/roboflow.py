"""Read Roboflow exports (Pascal VOC XML, COCO JSON, YOLOv8) into one `Annotation` type.

Every reader returns a `Scan`: the annotations it could use and a `Skip` for every file it could
not, with the reason, so that a build accounts for each file present. Coordinates are kept in
pixels of the image as stored (see `rasterize.py` for how they become masks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from clipseg_drywall.images import IMAGE_SUFFIXES

SPLIT_NAMES = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}
COCO_FILE = "_annotations.coco.json"


class ExportError(ValueError):
    """A path that cannot be read as an export at all (as opposed to one bad file inside it)."""


@dataclass(frozen=True)
class Shape:
    """One object: a polygon [(x, y), ...] or a box (x0, y0, x1, y1), in stored-image pixels."""

    polygon: tuple[tuple[float, float], ...] | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass
class Annotation:
    image_path: Path
    split: str  # train | validation | test
    shapes: list[Shape]
    # The size the annotation says the image has (VOC <size>, COCO width/height), if it says.
    annotated_size: tuple[int, int] | None = None
    # YOLO coordinates are fractions of the image size, known only once the image is opened.
    normalized: bool = False
    invalid_objects: list[str] = field(default_factory=list)

    @property
    def image_id(self) -> str:
        return self.image_path.name


@dataclass(frozen=True)
class Skip:
    path: Path
    reason: str


@dataclass
class Scan:
    annotations: list[Annotation] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def extend(self, other: Scan) -> None:
        self.annotations += other.annotations
        self.skipped += other.skipped


def source_id(image_id: str) -> str:
    """The photo a Roboflow file was made from: the part of the name before `.rf.`."""
    stem = image_id.split(".rf.")[0] if ".rf." in image_id else Path(image_id).stem
    return stem


# --- object validation -------------------------------------------------------------------


def _finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _polygon(values: list[float]) -> Shape | str:
    """A polygon from flat x, y values, or the reason it cannot be one."""
    if len(values) % 2:
        return f"polygon has an odd number of coordinates ({len(values)})"
    if not _finite(values):
        return "polygon has NaN or infinite coordinates"
    points = tuple(zip(values[0::2], values[1::2]))
    if len(set(points)) < 3:
        return f"polygon has fewer than 3 distinct points ({len(set(points))})"
    return Shape(polygon=points)


def _box(x0: float, y0: float, x1: float, y1: float) -> Shape | str:
    if not _finite((x0, y0, x1, y1)):
        return "box has NaN or infinite coordinates"
    if x1 < x0 or y1 < y0:
        return f"box has max < min ({x0}, {y0}, {x1}, {y1})"
    return Shape(box=(x0, y0, x1, y1))


def _add(annotation: Annotation, shape: Shape | str, where: str) -> None:
    if isinstance(shape, Shape):
        annotation.shapes.append(shape)
    else:
        annotation.invalid_objects.append(f"{where}: {shape}")


# --- path safety ---------------------------------------------------------------------------


def _inside(folder: Path, file_name: str, annotation_file: Path) -> Path | Skip:
    """`folder/file_name`, refusing names that would leave the export (`../x.jpg`, `/etc/x`)."""
    name = Path(file_name)
    if name.is_absolute() or len(name.parts) != 1 or name.name in ("", ".", ".."):
        return Skip(annotation_file, f"file name {file_name!r} has path components; only plain names are read")
    return folder / name.name


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --- Pascal VOC ------------------------------------------------------------------------------


def _number(node, tag: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"<{tag}> missing")
    return float(child.text)


def _read_voc_file(xml_path: Path, split: str) -> Annotation | Skip:
    try:
        root = etree.parse(str(xml_path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    except etree.XMLSyntaxError as error:
        return Skip(xml_path, f"malformed XML: {error}")
    file_name = root.findtext("filename") or f"{xml_path.stem}.jpg"
    image_path = _inside(xml_path.parent, file_name.strip(), xml_path)
    if isinstance(image_path, Skip):
        return image_path
    if not image_path.is_file():
        return Skip(xml_path, f"image {image_path.name!r} named in <filename> is missing")
    size = root.find("size")
    annotated_size = None
    if size is not None:
        try:
            annotated_size = (int(_number(size, "width")), int(_number(size, "height")))
        except ValueError:
            annotated_size = None
    annotation = Annotation(image_path, split, [], annotated_size)
    for index, obj in enumerate(root.iter("object")):
        where = f"object {index}"
        polygon = obj.find("polygon")
        if polygon is not None and len(polygon):
            try:
                values = [float(child.text) for child in polygon]
            except (TypeError, ValueError):
                _add(annotation, "polygon has a non-numeric coordinate", where)
                continue
            _add(annotation, _polygon(values), where)
            continue
        box = obj.find("bndbox")
        if box is None:
            _add(annotation, "object has neither <polygon> nor <bndbox>", where)
            continue
        try:  # Roboflow writes xmin, xmax, ymin, ymax: look children up by tag, not position.
            coords = [_number(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as error:
            _add(annotation, f"<bndbox> {error}", where)
            continue
        _add(annotation, _box(*coords), where)
    return annotation


def read_voc(split_dir: Path, split: str) -> Scan:
    scan = Scan()
    annotated: set[Path] = set()
    for xml_path in sorted(split_dir.glob("*.xml")):
        result = _read_voc_file(xml_path, split)
        if isinstance(result, Skip):
            scan.skipped.append(result)
            image = split_dir / f"{xml_path.stem}.jpg"
            annotated.add(image)  # its image is accounted for by this skip
        else:
            scan.annotations.append(result)
            annotated.add(result.image_path)
    scan.skipped += [Skip(p, "image has no annotation file") for p in _images_in(split_dir) if p not in annotated]
    return scan


# --- COCO JSON -------------------------------------------------------------------------------


def read_coco(split_dir: Path, split: str) -> Scan:
    json_path = split_dir / COCO_FILE
    scan = Scan()
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        images, objects = data["images"], data.get("annotations", [])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        scan.skipped.append(Skip(json_path, f"malformed JSON: {error}"))
        return scan
    except (KeyError, TypeError):
        scan.skipped.append(Skip(json_path, "not a COCO file: no 'images' list"))
        return scan
    by_id: dict[int, Annotation] = {}
    listed: set[Path] = set()
    for image in images:
        image_path = _inside(split_dir, str(image.get("file_name", "")), json_path)
        if isinstance(image_path, Skip):
            scan.skipped.append(image_path)
            continue
        listed.add(image_path)
        if not image_path.is_file():
            scan.skipped.append(Skip(json_path, f"image {image_path.name!r} listed in the JSON is missing"))
            continue
        size = (int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None
        by_id[image["id"]] = Annotation(image_path, split, [], size)
    for obj in objects:
        annotation = by_id.get(obj.get("image_id"))
        if annotation is None:
            continue  # belongs to an image skipped above
        where = f"annotation id {obj.get('id')}"
        polygons = obj.get("segmentation")
        if isinstance(polygons, list) and polygons and isinstance(polygons[0], list):
            for polygon in polygons:
                _add(annotation, _polygon([float(v) for v in polygon]), where)
        elif "bbox" in obj and len(obj["bbox"]) == 4:
            x, y, w, h = (float(v) for v in obj["bbox"])
            _add(annotation, _box(x, y, x + w, y + h), where)
        else:
            _add(annotation, "neither a polygon segmentation nor a bbox", where)
    scan.annotations = list(by_id.values())
    scan.skipped += [Skip(p, f"image not listed in {COCO_FILE}") for p in _images_in(split_dir) if p not in listed]
    return scan


# --- YOLOv8 ----------------------------------------------------------------------------------


def _read_yolo_labels(label_path: Path, image_path: Path, split: str) -> Annotation | Skip:
    try:
        lines = label_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        return Skip(label_path, f"label file is not text: {error}")
    annotation = Annotation(image_path, split, [], normalized=True)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            values = [float(v) for v in line.split()[1:]]
        except ValueError:
            _add(annotation, "non-numeric value", where)
            continue
        if len(values) == 4:  # `class cx cy w h`: an object without a polygon
            cx, cy, w, h = values
            _add(annotation, _box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), where)
        else:
            _add(annotation, _polygon(values), where)
    return annotation


def read_yolo(split_dir: Path, split: str) -> Scan:
    scan = Scan()
    images, labels = split_dir / "images", split_dir / "labels"
    image_by_stem = {p.stem: p for p in _images_in(images)}
    for label_path in sorted(labels.glob("*.txt")) if labels.is_dir() else []:
        image_path = image_by_stem.pop(label_path.stem, None)
        if image_path is None:
            scan.skipped.append(Skip(label_path, "label file has no image"))
            continue
        result = _read_yolo_labels(label_path, image_path, split)
        (scan.skipped if isinstance(result, Skip) else scan.annotations).append(result)
    scan.skipped += [Skip(p, "image has no label file") for p in image_by_stem.values()]
    return scan


# --- export detection ------------------------------------------------------------------------


def detect_format(split_dir: Path) -> str | None:
    """'coco', 'yolo' or 'voc' for one split folder, from the files Roboflow writes."""
    if (split_dir / COCO_FILE).is_file():
        return "coco"
    if (split_dir / "images").is_dir() and (split_dir / "labels").is_dir():
        return "yolo"
    if any(split_dir.glob("*.xml")):
        return "voc"
    return None


READERS = {"voc": read_voc, "coco": read_coco, "yolo": read_yolo}


def read_export(root: Path | str) -> tuple[Scan, dict[str, str]]:
    """Every split of one export folder, and the format found for each split."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root}: not a directory; expected a Roboflow export folder")
    scan, formats = Scan(), {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_NAMES.get(split_dir.name)
        if split is None:
            continue
        export_format = detect_format(split_dir)
        if export_format is None:
            if any(split_dir.iterdir()):
                raise ExportError(
                    f"{split_dir}: no {COCO_FILE}, no images/ + labels/ and no .xml files; "
                    "export the dataset from Roboflow as COCO JSON, YOLOv8 or Pascal VOC"
                )
            continue  # an empty split folder holds nothing to lose
        formats[split] = export_format
        scan.extend(READERS[export_format](split_dir, split))
    if not formats:
        raise ExportError(
            f"{root}: not a Roboflow export (expected train/, valid/ or test/ folders holding "
            f"COCO JSON, YOLOv8 or Pascal VOC files)"
        )
    return scan, formats
