"""Every bad input gets a clear error or a reported skip, and the totals add up to the files present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builders.__main__ import main
from data_builders.drywall_qa import build
from data_builders.rasterize import EXIF_ORIENTATION
from data_builders.roboflow import ExportError, read_export

from .helpers import exit_code

VOC_OBJECT = "<object><name>crack</name><bndbox><xmin>{}</xmin><xmax>{}</xmax><ymin>{}</ymin><ymax>{}</ymax></bndbox>{}</object>"


def _voc(filename: str, objects: list[str], size: tuple[int, int] = (64, 48)) -> str:
    return (
        f"<annotation><folder></folder><filename>{filename}</filename>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        + "".join(objects)
        + "</annotation>"
    )


def _box(x0, x1, y0, y1, polygon: list[tuple[float, float]] | None = None) -> str:
    poly = ""
    if polygon is not None:
        poly = "<polygon>" + "".join(f"<x{i}>{x}</x{i}><y{i}>{y}</y{i}>" for i, (x, y) in enumerate(polygon, 1)) + "</polygon>"
    return VOC_OBJECT.format(x0, x1, y0, y1, poly)


def _image(path: Path, mode: str = "RGB", size=(64, 48), exif_orientation: int | None = None) -> None:
    if mode == "I;16":
        image = Image.fromarray((np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 20).astype(np.uint16))
    elif mode == "P":
        image = Image.new("RGB", size, (200, 30, 30)).convert("P")
    else:
        image = Image.new(mode, size, {"L": 128, "RGBA": (10, 20, 30, 128), "CMYK": (0, 50, 50, 0)}.get(mode, (90, 90, 90)))
    exif = Image.Exif()
    if exif_orientation:
        exif[EXIF_ORIENTATION] = exif_orientation
    fmt = "PNG" if mode in ("I;16", "RGBA", "P") else "JPEG"
    image.save(path, format=fmt, exif=exif) if exif_orientation else image.save(path, format=fmt)


@pytest.fixture
def bad_voc_export(tmp_path) -> Path:
    root = tmp_path / "voc"
    split = root / "train"
    split.mkdir(parents=True)
    good = _box(10, 30, 5, 20)
    # good ones, in every colour mode people upload
    for mode in ("RGB", "L", "RGBA", "P", "CMYK", "I;16"):
        name = f"mode_{mode.replace(';', '')}.{'png' if mode in ('I;16', 'RGBA', 'P') else 'jpg'}"
        _image(split / name, mode)
        (split / f"{Path(name).stem}.xml").write_text(_voc(name, [good]))
    # broken ones
    _image(split / "malformed.jpg")
    (split / "malformed.xml").write_text("<annotation><filename>malformed.jpg</filename><object>")
    (split / "orphan_xml.xml").write_text(_voc("gone.jpg", [good]))
    _image(split / "no_annotation.jpg")
    _image(split / "truncated.jpg")
    data = (split / "truncated.jpg").read_bytes()
    (split / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (split / "truncated.xml").write_text(_voc("truncated.jpg", [good]))
    _image(split / "escape.jpg")
    (split / "escape.xml").write_text(_voc("../escape.jpg", [good]))
    (tmp_path / "escape.jpg").write_bytes((split / "escape.jpg").read_bytes())
    _image(split / "two_points.jpg")
    (split / "two_points.xml").write_text(_voc("two_points.jpg", [_box(1, 5, 1, 5, [(1, 1), (5, 5)])]))
    _image(split / "nan.jpg")
    (split / "nan.xml").write_text(_voc("nan.jpg", [_box("nan", 5, 1, 5), good]))
    _image(split / "negative.jpg")
    (split / "negative.xml").write_text(_voc("negative.jpg", [_box(-20, 10, -5, 10)]))
    return root


def _accounted_images(dataset, report) -> set[str]:
    rows = {row for split in dataset.values() for row in split["image_id"]}
    return rows | {Path(skip.path).stem for skip in report.skipped}


def test_every_bad_file_is_reported_and_totals_add_up(bad_voc_export):
    dataset, report = build(cracks=[bad_voc_export])
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons["malformed.xml"].startswith("malformed XML")
    assert "'gone.jpg'" in reasons["orphan_xml.xml"] and "missing" in reasons["orphan_xml.xml"]
    assert reasons["no_annotation.jpg"] == "image has no annotation file"
    assert reasons["truncated.jpg"].startswith("not a readable image")
    assert "path components" in reasons["escape.xml"]
    assert "fewer than 3" in reasons["two_points.jpg"]  # its only object was invalid
    invalid = {Path(s.path).name: s.reason for s in report.invalid_objects}
    assert "NaN" in invalid["nan.jpg"]
    # every image file on disk is either a row or a reported skip (by its own or its annotation's name)
    images = {p.stem for p in (bad_voc_export / "train").iterdir() if p.suffix in (".jpg", ".png")}
    names = {Path(n).stem for n in _accounted_images(dataset, report)}
    assert images <= names
    # one row or one skip per image, plus one skip for the XML whose image does not exist
    assert len(dataset["train"]) + len(report.skipped) == len(images) + 1
    assert len(dataset["train"]) == 8  # 6 colour modes + nan (keeps its good box) + negative


def test_non_rgb_images_become_rgb_with_their_content(bad_voc_export):
    rows = {r["image_id"]: r for r in build(cracks=[bad_voc_export])[0]["train"]}
    for name in ("mode_L.jpg", "mode_RGBA.png", "mode_P.png", "mode_CMYK.jpg", "mode_I16.png"):
        assert rows[name]["image"].mode == "RGB" and rows[name]["image"].size == (64, 48)
    sixteen = np.asarray(rows["mode_I16.png"]["image"])[..., 0].astype(int)
    assert sixteen.max() > 200 and len(np.unique(sixteen)) > 50  # scaled, not clipped at 255
    assert np.asarray(rows["mode_L.jpg"]["image"]).mean() == pytest.approx(128, abs=2)
    mask = np.asarray(rows["mode_RGBA.png"]["mask"])
    assert mask[5:21, 10:31].min() == 255 and mask.sum() // 255 == 21 * 16  # Pillow's inclusive box


def test_negative_coordinates_are_clipped_to_the_image(bad_voc_export):
    rows = {r["image_id"]: r for r in build(cracks=[bad_voc_export])[0]["train"]}
    mask = np.asarray(rows["negative.jpg"]["mask"]) > 0
    assert mask[0:11, 0:11].all() and mask.sum() == 11 * 11


def test_exif_orientation_keeps_the_stored_pixel_grid(tmp_path):
    """Roboflow annotates the stored pixels: masks are drawn on them, and the tag is dropped."""
    split = tmp_path / "voc" / "train"
    split.mkdir(parents=True)
    _image(split / "rotated.jpg", size=(64, 48), exif_orientation=6)
    (split / "rotated.xml").write_text(_voc("rotated.jpg", [_box(0, 10, 0, 5)], size=(64, 48)))
    _image(split / "annotated_upright.jpg", size=(64, 48), exif_orientation=6)
    (split / "annotated_upright.xml").write_text(_voc("annotated_upright.jpg", [_box(0, 10, 0, 5)], size=(48, 64)))
    rows = {r["image_id"]: r for r in build(cracks=[tmp_path / "voc"])[0]["train"]}
    stored = rows["rotated.jpg"]
    assert stored["image"].size == stored["mask"].size == (64, 48)
    assert EXIF_ORIENTATION not in stored["image"].getexif()
    assert np.asarray(stored["mask"])[0:6, 0:11].min() == 255
    # The annotation's <size> only fits the rotated view: then the image is rotated to match it.
    upright = rows["annotated_upright.jpg"]
    assert upright["image"].size == upright["mask"].size == (48, 64)


def test_coco_yolo_and_voc_describe_the_same_object_the_same_way(tmp_path):
    polygon = [(10.0, 5.0), (40.0, 8.0), (35.0, 30.0), (12.0, 25.0)]
    image = Image.new("RGB", (64, 48), (90, 90, 90))
    voc, coco, yolo = tmp_path / "voc" / "valid", tmp_path / "coco" / "valid", tmp_path / "yolo" / "valid"
    for folder in (voc, coco, yolo / "images", yolo / "labels"):
        folder.mkdir(parents=True)
    for folder in (voc, coco, yolo / "images"):
        image.save(folder / "a.jpg")
    (voc / "a.xml").write_text(_voc("a.jpg", [_box(10, 40, 5, 30, polygon)]))
    flat = [v for point in polygon for v in point]
    (coco / "_annotations.coco.json").write_text(json.dumps({
        "images": [{"id": 0, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 0, "image_id": 0, "bbox": [10, 5, 30, 25], "segmentation": [flat]}],
    }))
    normalised = " ".join(f"{x / 64} {y / 48}" for x, y in polygon)
    (yolo / "labels" / "a.txt").write_text(f"0 {normalised}\n")
    masks = [np.asarray(build(cracks=[tmp_path / f])[0]["validation"][0]["mask"]) for f in ("voc", "coco", "yolo")]
    assert masks[0].sum() > 0
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])


def test_coco_file_name_with_path_components_never_reads_outside(tmp_path):
    split = tmp_path / "coco" / "train"
    split.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.jpg")
    Image.new("RGB", (8, 8)).save(split / "ok.jpg")
    (split / "_annotations.coco.json").write_text(json.dumps({
        "images": [{"id": 0, "file_name": "../../secret.jpg"}, {"id": 1, "file_name": "ok.jpg"}],
        "annotations": [{"id": 0, "image_id": 1, "bbox": [1, 1, 2, 2]}],
    }))
    dataset, report = build(joints=[tmp_path / "coco"])
    assert dataset["train"]["image_id"] == ["ok.jpg"]
    assert any("path components" in s.reason and "secret" in s.reason for s in report.skipped)


def test_yolo_image_without_label_and_label_without_image(tmp_path):
    split = tmp_path / "yolo" / "train"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    Image.new("RGB", (8, 8)).save(split / "images" / "a.jpg")
    Image.new("RGB", (8, 8)).save(split / "images" / "b.jpg")
    (split / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (split / "labels" / "c.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    scan, formats = read_export(tmp_path / "yolo")
    assert formats == {"train": "yolo"}
    assert [a.image_id for a in scan.annotations] == ["a.jpg"]
    assert {(Path(s.path).name, s.reason) for s in scan.skipped} == {
        ("b.jpg", "image has no label file"),
        ("c.txt", "label file has no image"),
    }


def test_paths_that_are_not_exports_get_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="not a Roboflow export"):
        read_export(tmp_path / "empty")
    with pytest.raises(ExportError, match="not a directory"):
        read_export(tmp_path / "missing")
    (tmp_path / "odd" / "train").mkdir(parents=True)
    (tmp_path / "odd" / "train" / "notes.txt").write_text("hello")
    with pytest.raises(ExportError, match="no _annotations.coco.json"):
        read_export(tmp_path / "odd")


def test_cli_reports_errors_and_writes_stats(tmp_path, bad_voc_export, capsys):
    (tmp_path / "empty").mkdir()
    assert exit_code(main, ["build", "--cracks", str(tmp_path / "empty"), "--output", str(tmp_path / "x")]) == 2
    assert "not a Roboflow export" in capsys.readouterr().err
    out = tmp_path / "built"
    assert main(["build", "--cracks", str(bad_voc_export), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped files: 6" in printed and "malformed XML" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"]["count"] == 6 and stats["rows"] == 8
    assert (out / "dataset_dict.json").is_file()
