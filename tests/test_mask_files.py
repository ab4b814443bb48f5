"""Mask files: the PNG encoding, the naming rule (slugs, hashes, stems), predict's index.csv across calls, atomic writes."""

from __future__ import annotations

import io
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from clipseg_drywall import atomic_files, mask_png, naming
from clipseg_drywall.mask_index import INDEX_FILE
from clipseg_drywall.mask_png import encode_mask_png
from clipseg_drywall.naming import mask_file_name, prompt_hash, prompt_slugs

from .helpers import CRACKS, index_rows, predict, requires_shared


@requires_shared
def test_a_prompt_over_77_tokens_is_truncated_with_a_warning(tiny_model_dir, photo, tmp_path, capsys):
    long_prompt = " ".join(["crack"] * 500)
    with pytest.warns(UserWarning, match=r"has 50\d tokens; the text encoder reads only the first 77"):
        code, out, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", long_prompt,
                                  "--output", str(tmp_path / "out")], capsys)
    assert code == 0, err
    (row,) = index_rows(tmp_path / "out")
    assert row["prompt"] == long_prompt
    mask = np.asarray(Image.open(tmp_path / "out" / row["mask"]))
    assert mask.shape == (640, 640) and set(np.unique(mask)) <= {0, 255}
    assert len(row["mask"].split("__")[1]) <= naming.MAX_SLUG_CHARS + len(".png")  # the name is cut too


@requires_shared
def test_a_non_latin_prompt_gets_a_file(tiny_model_dir, photo, tmp_path, capsys):
    code, _, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", "墙上的裂缝", "--prompt", "🧱!!",
                            "--output", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / f"{photo.stem}__墙上的裂缝.png").is_file()
    assert (tmp_path / f"{photo.stem}__prompt-{prompt_hash('🧱!!')}.png").is_file()


@requires_shared
def test_prompts_with_the_same_slug_get_different_files(tiny_model_dir, photo, tmp_path, capsys):
    prompts = ["segment crack", "Segment CRACK!"]
    code, out, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", prompts[0], "--prompt",
                              prompts[1], "--output", str(tmp_path)], capsys)
    assert code == 0, err
    expected = {p: f"{photo.stem}__segment-crack-{prompt_hash(p)}.png" for p in prompts}
    assert {row["prompt"]: row["mask"] for row in index_rows(tmp_path)} == expected
    assert all((tmp_path / name).is_file() for name in expected.values())
    assert "wrote 2 files" in out
    # a later call into the same folder does not take the name of an earlier call's other prompt
    code, _, err = predict([str(photo), "--model", str(tiny_model_dir), "--prompt", "segment-crack",
                            "--output", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / f"{photo.stem}__segment-crack.png").is_file() and len(index_rows(tmp_path)) == 3


@requires_shared
def test_a_stem_with_a_double_underscore_keeps_earlier_masks(tiny_model_dir, photo, tmp_path, capsys):
    """The slug follows the stem's last `__`: `IMG__001` must not hide `segment crack`'s name from a later call."""
    image = tmp_path / "IMG__001.jpg"
    image.write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    arguments = [str(image), "--model", str(tiny_model_dir), "--output", str(out), "--threshold", "0.5"]
    assert predict([*arguments, "--prompt", "segment crack"], capsys)[0] == 0
    first = (out / "IMG__001__segment-crack.png").read_bytes()
    assert predict([*arguments, "--prompt", "Segment CRACK!"], capsys)[0] == 0
    hashed = f"IMG__001__segment-crack-{prompt_hash('Segment CRACK!')}.png"
    assert {row["prompt"]: row["mask"] for row in index_rows(out)} == {
        "segment crack": "IMG__001__segment-crack.png", "Segment CRACK!": hashed}
    assert (out / "IMG__001__segment-crack.png").read_bytes() == first and (out / hashed).is_file()


@requires_shared
def test_index_survives_a_failure_mid_call(tiny_model_dir, tmp_path):
    """Masks written before a failure stay, complete and listed; nothing half-written is left."""
    from clipseg_drywall.predict import predict as predict_images
    from clipseg_drywall.segmenters.pytorch import Segmenter

    class FailsOnSecondBatch(Segmenter):
        calls = 0

        def launch_masks(self, *args, **kwargs):  # the batch pipeline's model stage
            self.calls += 1
            if self.calls == 2:
                raise OSError("No space left on device")
            return super().launch_masks(*args, **kwargs)

    segmenter = FailsOnSecondBatch.from_pretrained(tiny_model_dir, batch_size=1)
    photos = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[:2]
    with pytest.raises(OSError, match="No space"):
        predict_images(segmenter, photos, ["segment crack"], tmp_path)
    (row,) = index_rows(tmp_path)
    assert row["image"] == str(photos[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([INDEX_FILE, row["mask"]])


def test_atomic_write_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "photo__crack.png"
    target.write_bytes(b"an earlier, complete mask")
    written = []

    def fails_after_the_bytes(handle, mode):  # the temporary file is open and written to, then the disk is full
        written.append(os.fstat(handle).st_nlink)
        raise OSError("disk full")

    monkeypatch.setattr(atomic_files.os, "fchmod", fails_after_the_bytes)
    with pytest.raises(OSError, match="disk full"):
        atomic_files.save_mask(np.zeros((4, 4), np.uint8), target)
    assert written == [1]  # it failed on a real temporary file, beside the target
    assert target.read_bytes() == b"an earlier, complete mask"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@requires_shared
def test_mask_png_decodes_to_the_mask_and_is_as_small_as_pillows(shared_dataset):
    rows = shared_dataset["validation"].select(range(0, 400, 20))  # crack polygons and join boxes
    ours = pillows = 0
    for row in rows:
        mask = np.asarray(row["mask"])
        png = encode_mask_png(mask)
        Image.open(io.BytesIO(png)).verify()  # chunk CRCs and structure
        decoded = _decoded(png)
        assert decoded.mode == "L" and decoded.size == (mask.shape[1], mask.shape[0])
        np.testing.assert_array_equal(np.asarray(decoded), mask)
        with io.BytesIO() as file:
            Image.fromarray(mask).save(file, format="PNG")  # Pillow's defaults: level 6, a filter per row
            pillows += file.tell()
        ours += len(png)
    assert ours <= 1.1 * pillows, (ours, pillows)


@requires_shared
def test_mask_png_is_the_same_file_with_or_without_zlib_ng(shared_dataset, monkeypatch):
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng", reason="zlib-ng not installed: mask_png uses zlib")
    assert mask_png.deflate_library is zlib_ng
    masks = [np.asarray(row["mask"]) for row in shared_dataset["validation"].select(range(0, 400, 40))]
    faster = [encode_mask_png(mask) for mask in masks]
    monkeypatch.setattr(mask_png, "deflate_library", zlib)
    assert [encode_mask_png(mask) for mask in masks] == faster


@pytest.mark.parametrize("shape", [(1, 1), (3, 1000), (641, 7)])
def test_mask_png_keeps_any_shape_and_every_level(shape):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, size=shape, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(_decoded(encode_mask_png(mask))), mask)
    view = np.asarray(rng.integers(0, 2, size=(shape[1], shape[0]), dtype=np.uint8) * 255).T  # not C-contiguous
    np.testing.assert_array_equal(np.asarray(_decoded(encode_mask_png(view))), view)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4), np.float32), np.zeros((0, 4), np.uint8)])
def test_mask_png_refuses_what_is_not_a_mask(bad):
    with pytest.raises(ValueError, match=rf"non-empty \(height, width\) uint8 array, got {bad.dtype}"):
        encode_mask_png(bad)


def test_naming_rule():
    slugs = prompt_slugs(["segment joint/tape", "Segment  Joint-Tape", "crack", "crack"])
    assert slugs == {"segment joint/tape": f"segment-joint-tape-{prompt_hash('segment joint/tape')}",
                     "Segment  Joint-Tape": f"segment-joint-tape-{prompt_hash('Segment  Joint-Tape')}",
                     "crack": "crack"}
    assert mask_file_name("dir/IMG_1.jpg", "crack", slugs) == "IMG_1__crack.png"
    with pytest.raises(ValueError, match="empty prompt"):
        prompt_slugs(["  "])
