"""Segmenter and the predict CLI: sizes and values for every image mode, EXIF, one vision pass, stock numerics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clipseg_drywall.images import load_image
from clipseg_drywall.naming import mask_file_name
from clipseg_drywall.predict import overlay
from clipseg_drywall.segmenters.pytorch import Segmenter
from clipseg_drywall.upsampling import threshold_masks, upsample_logits

from .helpers import CRACKS, REPO, requires_shared

PROMPTS = ["segment crack", "segment taping area"]
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real crack photo, cropped to a non-square, non-640 size (fast, and catches width/height swaps)."""
    if not CRACKS.is_dir():
        pytest.skip(f"real data not found in {CRACKS}")
    path = sorted((CRACKS / "valid" / "images").glob("*.jpg"))[0]
    return Image.open(path).convert("RGB").crop((0, 0, 480, 320)).resize((301, 203))


@pytest.fixture(scope="module")
def mode_files(photo, tmp_path_factory) -> dict[str, Path]:
    """The same photo as RGB JPEG, RGBA, L, P, 16-bit greyscale PNGs, and an EXIF-rotated JPEG."""
    folder = tmp_path_factory.mktemp("modes")
    files = {"rgb": folder / "rgb.jpg", "rgba": folder / "rgba.png", "grey": folder / "grey.png",
             "palette": folder / "palette.png", "grey16": folder / "grey16.png", "exif": folder / "exif.jpg"}
    photo.save(files["rgb"])
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(files["rgba"])
    photo.convert("L").save(files["grey"])
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    assert grey16.mode == "I;16"
    grey16.save(files["grey16"])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown rotated 90 degrees clockwise: portrait
    photo.save(files["exif"], exif=exif.tobytes())
    return files


def displayed_size(path: Path) -> tuple[int, int]:
    """(height, width) an image viewer shows."""
    width, height = ImageOps.exif_transpose(Image.open(path)).size
    return height, width


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir, photo) -> Segmenter:
    segmenter = Segmenter.from_pretrained(tiny_model_dir, batch_size=2)
    # the random tiny model's probabilities sit in a narrow band: threshold at the median so that
    # masks have both values and a wrong pixel anywhere shows
    (result,) = segmenter.iter_segment([photo], PROMPTS, return_probabilities=True)
    segmenter.threshold = float(np.median(result.probabilities[PROMPTS[0]]))
    return segmenter


def test_threshold_comes_from_config(tiny_model_dir):
    assert Segmenter.from_pretrained(tiny_model_dir).threshold == 0.5  # absent from config: the default
    assert Segmenter.from_pretrained(tiny_model_dir, threshold=0.3).threshold == 0.3


@requires_shared
def test_masks_every_mode_at_native_size(segmenter, mode_files):
    results = segmenter.segment(list(mode_files.values()), PROMPTS)
    assert len(results) == len(mode_files)
    for path, masks in zip(mode_files.values(), results):
        assert list(masks) == PROMPTS
        for mask in masks.values():
            assert mask.dtype == np.uint8 and mask.shape == displayed_size(path), path.name
            assert set(np.unique(mask)) <= {0, 255}, path.name
    assert displayed_size(mode_files["exif"]) == (301, 203)  # the rotation really changed the shape
    assert any(0 < (m > 0).mean() < 1 for masks in results for m in masks.values())


@requires_shared
def test_exif_orientation_is_applied(segmenter, mode_files):
    rotated = Image.open(mode_files["rgb"]).transpose(Image.Transpose.ROTATE_270)  # orientation 6, by hand
    from_exif, by_hand = segmenter.segment([mode_files["exif"], rotated], PROMPTS)
    for prompt in PROMPTS:
        # JPEG re-encoding differs by a few grey levels: compare agreement, not identity
        assert (from_exif[prompt] == by_hand[prompt]).mean() > 0.97


@requires_shared
def test_load_image_rotates_a_file_in_place_but_never_a_callers_image(mode_files):
    stored = Image.open(mode_files["exif"])
    stored.load()
    assert load_image(mode_files["exif"]).size == stored.size[::-1]
    assert load_image(stored).size == stored.size[::-1]
    assert stored.size == (301, 203) and stored.getexif().get(EXIF_ORIENTATION) == 6  # the caller's, untouched


def test_overlay_paints_the_masks_pixels_only_and_is_a_new_image(photo):
    image = load_image(photo)
    empty = overlay(image, np.zeros((image.height, image.width), np.uint8))
    assert empty is not image and np.array_equal(np.asarray(empty), np.asarray(image))
    mask = np.zeros((image.height, image.width), np.uint8)
    mask[5, 7] = 255
    changed = (np.asarray(overlay(image, mask)) != np.asarray(image)).any(axis=2)
    assert changed[5, 7] and changed.sum() == 1


@pytest.mark.parametrize("threshold", [0.45, 0.5, 1 / 3, 0.0, 1.0])
def test_cpu_threshold_is_the_float32_comparison_torch_makes(threshold):
    below, at, above = np.nextafter(np.float32(threshold), np.float32(-1)), np.float32(threshold), \
        np.nextafter(np.float32(threshold), np.float32(2))
    values = np.concatenate([[below, at, above, 0.0, 1.0], np.random.default_rng(0).random(999, dtype=np.float32)])
    probabilities = torch.from_numpy(values.astype(np.float32)).reshape(4, 251)
    masks = threshold_masks(probabilities, threshold)  # numpy on the CPU
    assert masks.dtype == torch.uint8 and masks.shape == probabilities.shape
    assert torch.equal(masks, (probabilities > threshold).to(torch.uint8).mul_(255))
    assert masks.flatten()[:3].tolist() == [0, 0, 255]  # just below, at, just above


@requires_shared
def test_one_vision_pass_per_image_and_cached_prompts(segmenter, photo):
    model = segmenter.model
    vision_images, text_calls = [], []
    hooks = [
        model.clip.vision_model.embeddings.register_forward_hook(lambda m, a, o: vision_images.append(o.shape[0])),
        model.clip.text_model.register_forward_hook(lambda m, a, o: text_calls.append(1)),
    ]
    try:
        segmenter._embeddings.clear()
        segmenter.segment([photo] * 3, PROMPTS)  # batch_size 2: batches of 2 and 1
        assert vision_images == [2, 1] and len(text_calls) == len(PROMPTS)
        segmenter.segment([photo], PROMPTS + ["drywall seam"])
        assert vision_images == [2, 1, 1] and len(text_calls) == len(PROMPTS) + 1  # only the new prompt
    finally:
        for hook in hooks:
            hook.remove()


@requires_shared
def test_same_masks_as_stock_forward_per_pair(segmenter, tiny_model_dir, mode_files):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    model = CLIPSegForImageSegmentation.from_pretrained(tiny_model_dir).eval()
    processor = CLIPSegProcessor.from_pretrained(tiny_model_dir)
    paths = [mode_files["rgb"], mode_files["rgba"], mode_files["exif"]]
    results = segmenter.segment(paths, PROMPTS)  # batched: 2 images, then 1
    for path, masks in zip(paths, results):
        image = load_image(path)
        for prompt in PROMPTS:
            with torch.no_grad():
                logits = model(**processor(text=[prompt], images=[image], return_tensors="pt")).logits
            probabilities = upsample_logits(logits.reshape(1, *logits.shape[-2:]), image.size[::-1])[0].sigmoid()
            expected = (probabilities > segmenter.threshold).numpy().astype(np.uint8) * 255
            differ = masks[prompt] != expected
            # batching may move a float by one ulp: only pixels within 1e-6 of the threshold may flip
            assert np.all(np.abs(probabilities.numpy()[differ] - segmenter.threshold) < 1e-6), (path.name, prompt)


def test_empty_prompt_is_rejected(tiny_model_dir):
    segmenter = Segmenter.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="empty prompt"):
        segmenter.segment([Image.new("RGB", (40, 30))], ["segment crack", "  "])


@requires_shared
def test_predict_cli(tiny_model_dir, mode_files, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in mode_files.values():
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "broken.png").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    output = tmp_path / "masks"
    command = [sys.executable, "-m", "clipseg_drywall.predict", "--model", str(tiny_model_dir),
               "--prompt", "segment crack", "--prompt", "segment joint/tape", "--output", str(output), "--overlay",
               "--threshold", "0.45", str(inputs), str(tmp_path / "empty")]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "broken.png" in run.stderr and "not a readable image" in run.stderr
    assert "empty" in run.stderr and "no images" in run.stderr
    for path in mode_files.values():
        for prompt in ("segment crack", "segment joint/tape"):
            written = output / mask_file_name(path, prompt)
            mask = Image.open(written)
            assert mask.mode == "L" and mask.size[::-1] == displayed_size(path)
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
            assert Image.open(written.with_name(written.stem + "_overlay.jpg")).format == "JPEG"
    assert mask_file_name(mode_files["rgb"], "segment joint/tape") == "rgb__segment-joint-tape.png"


def test_predict_cli_rejects_empty_prompt(tiny_model_dir, tmp_path):
    from clipseg_drywall.predict import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny_model_dir), "--prompt", " ", "--output", str(tmp_path), str(tmp_path)])
    assert exit_info.value.code == 2


def test_speed_options_keep_masks_close_and_reject_nonsense(tiny_model_dir, photo):
    reference = Segmenter.from_pretrained(tiny_model_dir)
    (base,) = reference.iter_segment([photo], PROMPTS, return_probabilities=True)
    for options, tolerance in ((["channels_last"], 1e-6), (["bf16"], 0.05), (["int8"], 0.05)):
        fast = Segmenter.from_pretrained(tiny_model_dir, speed_options=options)
        (result,) = fast.iter_segment([photo], PROMPTS, return_probabilities=True)
        for prompt in PROMPTS:
            difference = np.abs(result.probabilities[prompt] - base.probabilities[prompt]).max()
            assert difference <= tolerance, (options, prompt, difference)
            assert result.masks[prompt].shape == (photo.height, photo.width)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in fast.model.modules())
    with pytest.raises(ValueError, match="unknown speed options"):
        Segmenter.from_pretrained(tiny_model_dir, speed_options=["turbo"])
    with pytest.raises(ValueError, match="do not combine"):
        Segmenter.from_pretrained(tiny_model_dir, speed_options=["bf16", "int8"])
