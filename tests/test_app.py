"""The Gradio demo: the handler on real photos and bad inputs, the served API (gradio_client), a real browser.

A tiny random model (conftest) stands in for a trained one; its threshold is set to the median
probability of a real photo so that every mask marks something.
"""

from __future__ import annotations

import io
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_drywall import app
from clipseg_drywall.app import DEFAULT_PROMPTS, MAX_PHOTOS, segment_photos
from clipseg_drywall.naming import mask_file_name, prompt_slugs
from clipseg_drywall.prompts import all_prompts
from clipseg_drywall.segmenters.pytorch import Segmenter

from .browser import requires_chromium
from .helpers import CRACKS, JOINTS, requires_shared

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")

pytestmark = requires_shared


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    """One real validation photo of each export (640x640)."""
    return [sorted((CRACKS / "valid" / "images").glob("*.jpg"))[0], sorted((JOINTS / "valid").glob("*.jpg"))[0]]


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir, photos) -> Segmenter:
    segmenter = Segmenter.from_pretrained(tiny_model_dir)
    result = next(segmenter.iter_segment(photos[:1], DEFAULT_PROMPTS, return_probabilities=True))
    segmenter.threshold = float(np.median(result.probabilities[DEFAULT_PROMPTS[0]]))
    return segmenter


@pytest.fixture(scope="module")
def bad_files(photos, tmp_path_factory) -> dict[str, Path]:
    """Inputs a user may upload by mistake or from odd cameras."""
    folder = tmp_path_factory.mktemp("bad")
    files = {kind: folder / name for kind, name in [
        ("text", "notes.txt"), ("truncated", "truncated.jpg"), ("grey16", "grey16.png"), ("cmyk", "cmyk.jpg"),
        ("huge", "huge.jpg")]}
    files["text"].write_text("not a photo")
    data = photos[0].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    grey = np.asarray(Image.open(photos[0]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(files["grey16"])
    assert Image.open(files["grey16"]).mode == "I;16"
    Image.open(photos[0]).convert("CMYK").save(files["cmyk"])
    Image.new("RGB", (8000, 6000), (200, 190, 180)).save(files["huge"], quality=80)
    return files


def zip_masks(path: Path) -> dict[str, Image.Image]:
    with zipfile.ZipFile(path) as archive:
        return {name: Image.open(io.BytesIO(archive.read(name))) for name in archive.namelist()}


def check_result(result: app.DemoResult, photos: list[Path], prompts: list[str],
                 sizes: dict[str, tuple[int, int]] | None = None) -> None:
    """Overlays, table and zip agree with each other and with predict's naming, for `photos` in order."""
    slugs = prompt_slugs(prompts)
    assert [o.photo for o in result.overlays] == [p.name for p in photos]
    for overlay in result.overlays:
        assert [label for _, label in overlay.annotations] == prompts
        assert len(set(overlay.colours[p] for p in prompts)) == len(prompts)  # one colour per prompt
        assert max(overlay.image.size) <= app.OVERLAY_SIDE
        assert all(mask.shape == overlay.image.size[::-1] for mask, _ in overlay.annotations)
    masks = zip_masks(result.zip_path)
    assert sorted(masks) == sorted(mask_file_name(p.name, q, slugs) for p in photos for q in prompts)
    assert [(row[0], row[1], row[3]) for row in result.table] == [
        (p.name, q, mask_file_name(p.name, q, slugs)) for p in photos for q in prompts]
    for photo, _, share, name in result.table:
        mask = masks[name]
        assert mask.mode == "L" and mask.format == "PNG"
        expected = (sizes or {}).get(photo) or Image.open(next(p for p in photos if p.name == photo)).size
        assert mask.size == expected
        if mask.size[0] * mask.size[1] <= 1e6:  # huge masks: size only, the values cost seconds to read
            values = np.asarray(mask)
            assert set(np.unique(values)) <= {0, 255}
            assert 0.0 <= share <= 1.0 and share == pytest.approx(np.mean(values == 255), abs=1e-4)


def test_handler_on_real_photos(segmenter, photos, tmp_path):
    prompts = [*DEFAULT_PROMPTS, "wall joint", "Segment CRACK!"]  # a typed prompt whose slug clashes
    result = segment_photos(segmenter, photos, DEFAULT_PROMPTS, "wall joint,\nSegment CRACK!, ,segment crack",
                            None, work_dir=tmp_path)
    assert result.messages == []
    check_result(result, photos, prompts)
    shares = [row[2] for row in result.table]
    assert any(0 < share < 1 for share in shares)  # the threshold makes masks that mark something


def test_handler_bad_inputs_leave_good_photos_alone(segmenter, photos, bad_files, tmp_path):
    files = [bad_files["text"], photos[0], bad_files["truncated"], bad_files["grey16"], bad_files["cmyk"],
             bad_files["huge"]]
    started = time.perf_counter()
    result = segment_photos(segmenter, files, DEFAULT_PROMPTS, "", None, work_dir=tmp_path)
    assert time.perf_counter() - started < 60
    assert len(result.messages) == 2
    assert result.messages[0].startswith("notes.txt: not a readable image")
    assert result.messages[1].startswith("truncated.jpg: not a readable image")
    assert all(str(tmp_path) not in m and "Traceback" not in m for m in result.messages)
    good = [photos[0], bad_files["grey16"], bad_files["cmyk"], bad_files["huge"]]
    check_result(result, good, DEFAULT_PROMPTS, sizes={"huge.jpg": (8000, 6000)})


def test_handler_refuses_what_memory_bound_or_page_cannot_take(segmenter, photos, bad_files, tmp_path):
    # every vocabulary prompt on a 48 MP photo: 770 M mask pixels, refused from the header alone
    result = segment_photos(segmenter, [bad_files["huge"], photos[1]], all_prompts(), "", None, work_dir=tmp_path)
    assert len(result.messages) == 1 and result.messages[0].startswith("huge.jpg: 8000x6000 (48.0 MP) with 16")
    check_result(result, [photos[1]], all_prompts())
    for empty in ([], None):
        result = segment_photos(segmenter, photos, empty, " ,\n ", None, work_dir=tmp_path / "empty")
        assert result.overlays == [] and result.zip_path is None and result.messages[0].startswith("No prompt")
    result = segment_photos(segmenter, None, DEFAULT_PROMPTS, "", None, work_dir=tmp_path / "none")
    assert result.zip_path is None and result.messages[0].startswith("No photo")
    result = segment_photos(segmenter, photos, DEFAULT_PROMPTS, "", 1.5, work_dir=tmp_path / "bad-threshold")
    assert result.zip_path is None and "threshold" in result.messages[0]
    same_stem = tmp_path / "same" / photos[0].name
    same_stem.parent.mkdir()
    shutil.copyfile(photos[0], same_stem)
    result = segment_photos(segmenter, [photos[0], same_stem], DEFAULT_PROMPTS, "", None, work_dir=tmp_path)
    assert len(result.overlays) == 1 and "same file name stem" in result.messages[0]
    result = segment_photos(segmenter, [bad_files["text"]] * (MAX_PHOTOS + 1), DEFAULT_PROMPTS, "", None,
                            work_dir=tmp_path / "many")
    assert result.zip_path is None and f"first {MAX_PHOTOS}" in result.messages[0]


def test_long_and_many_prompts_are_said_on_the_page(segmenter, photos, tmp_path):
    long_prompt = "segment the " + " ".join(["long"] * 100) + " crack"
    result = segment_photos(segmenter, photos[:1], [], long_prompt, None, work_dir=tmp_path)
    assert len(result.overlays) == 1 and len(result.messages) == 1 and "truncated" in result.messages[0]
    many = ",".join(f"defect {i}" for i in range(app.MAX_PROMPTS + 1))
    result = segment_photos(segmenter, photos[:1], [], many, None, work_dir=tmp_path / "many")
    assert f"first {app.MAX_PROMPTS}" in result.messages[0]
    assert len(result.overlays[0].annotations) == app.MAX_PROMPTS


def test_prompt_parsing():
    assert app.parse_prompts(["segment crack"], " wall joint ,\n\nsegment crack,drywall seam\n") == [
        "segment crack", "wall joint", "drywall seam"]
    assert app.parse_prompts(None, None) == []


def test_command_line_errors_are_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    for argv, expected in [([], f"set {app.MODEL_ENV}"), (["--model", str(tmp_path / "missing")], "no such folder"),
                           (["--model", str(tmp_path)], "no config.json")]:
        with pytest.raises(SystemExit) as stop:
            app.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and expected in err and "\n" not in err


def test_help_and_a_missing_gradio_are_answered(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        app.main(["--help"])
    assert stop.value.code == 0 and "--model" in capsys.readouterr().out
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    with pytest.raises(SystemExit) as stop:
        app.main(["--model", "org/model"])
    assert stop.value.code == 2 and "pip install 'clipseg-drywall[demo]'" in capsys.readouterr().err


def test_space_entry_point_reads_the_model_from_env(monkeypatch, tiny_model_dir):
    import gradio as gr

    monkeypatch.setenv(app.MODEL_ENV, str(tiny_model_dir))
    space = Path(__file__).resolve().parents[1] / "space"
    namespace = {"__name__": "space_app"}  # not __main__: builds the demo without launching it
    exec(compile((space / "app.py").read_text(), str(space / "app.py"), "exec"), namespace)
    assert isinstance(namespace["demo"], gr.Blocks)
    assert "sdk: gradio" in (space / "README.md").read_text() and "app_file: app.py" in (space / "README.md").read_text()


@pytest.fixture(scope="module")
def server(segmenter, monkeypatch_module):
    """The demo served on 127.0.0.1 at a free port for this module, closed at the end."""
    monkeypatch_module.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = app.build_demo(segmenter)
    app.launch(demo, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_served_api(server, segmenter, photos, bad_files, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False, download_files=str(tmp_path))
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/segment"]["parameters"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in parameters}
    assert defaults["prompts"] == DEFAULT_PROMPTS and defaults["threshold"] == segmenter.threshold  # calibrated
    outputs = client.predict([handle_file(str(photos[0])), handle_file(str(bad_files["text"]))], DEFAULT_PROMPTS,
                             "", segmenter.threshold, api_name="/segment")
    *slots, table, zip_path, status = outputs
    assert len(slots) == MAX_PHOTOS
    first = slots[0]["value"]
    assert [a["label"] for a in first["annotations"]] == DEFAULT_PROMPTS
    assert Image.open(first["image"]).size == Image.open(photos[0]).size
    assert all(slot["visible"] is False for slot in slots[1:])
    assert table["headers"] == app.TABLE_HEADERS and [row[1] for row in table["data"]] == DEFAULT_PROMPTS
    slugs = prompt_slugs(DEFAULT_PROMPTS)
    masks = zip_masks(Path(zip_path))
    assert sorted(masks) == sorted(mask_file_name(photos[0].name, p, slugs) for p in DEFAULT_PROMPTS)
    assert all(m.size == (640, 640) and set(np.unique(np.asarray(m))) <= {0, 255} for m in masks.values())
    assert "notes.txt: not a readable image" in status and "Traceback" not in status


@requires_chromium
def test_browser(server, photos, tmp_path, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium
    driver.get(server)
    wait = WebDriverWait(driver, 30)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#photos input[type=file]"))
    upload.send_keys(str(photos[0]))
    wait.until(lambda d: photos[0].stem in d.find_element(By.ID, "photos").text)  # the name wraps before ".jpg"
    driver.find_element(By.ID, "run").click()
    legend = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay-0 .legend-item") or None)
    assert [item.text for item in legend] == DEFAULT_PROMPTS
    image = driver.find_element(By.CSS_SELECTOR, "#overlay-0 img.base-image")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#overlay-0 img.mask")) == len(DEFAULT_PROMPTS)
    assert "1 photo(s) segmented" in driver.find_element(By.ID, "status").text
    screenshot = tmp_path / "demo.png"
    assert driver.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 0
