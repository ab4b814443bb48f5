"""The report's review and re-render: accept/reject and notes in headless Chromium (kept over a reload,
exported as punch-list.csv), the page at a 1280-px window, `--rerender` (no torch, new rules equal a fresh
run, a review file's columns, refused when masks are missing or altered, nothing changed then), the speck
filter and the per-photo scale.

The report is conftest's `made` (the tiny random model on 6 real photos, 2 skipped); each test that
changes a folder works on a copy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import line

from clipseg_drywall.report import command as report
from clipseg_drywall.report.measurements import measure
from clipseg_drywall.report.page import page_summary, render_page

from .browser import requires_chromium, start_chromium
from .helpers import REPO, exit_code, read_csv, report_argv, requires_shared

# Runs the report's command in a process where `import torch` fails, as on a laptop with the core
# dependencies but no torch: a re-render must not need it.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'report'; "
                 "runpy.run_module('clipseg_drywall.report', run_name='__main__')")


def copy_of(made: Path, tmp_path: Path) -> Path:
    shutil.copytree(made, tmp_path / "report")
    return tmp_path / "report"


def files_of(folder: Path) -> dict[Path, bytes]:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- the speck filter on a mask of known geometry ---------------------------------------------------------


def test_the_speck_filter_drops_specks_and_keeps_the_crack():
    mask = np.zeros((200, 300), bool)
    rows, columns = line(100, 20, 100, 280)
    for offset in (-1, 0, 1):
        mask[rows + offset, columns] = True  # a 3 px wide, 261 px long crack
    clean = measure(mask, crack=True, min_region_px=0)
    rng = np.random.default_rng(0)
    noisy = mask.copy()
    noisy[rng.integers(0, 60, 400), rng.integers(0, 300, 400)] = True  # 1-2 px specks above the crack
    assert measure(noisy, crack=True, min_region_px=0).regions > 300
    filtered = measure(noisy, crack=True, min_region_px=16)
    assert filtered.regions == 1 and filtered.min_region_px == 16
    assert (filtered.coverage, filtered.length_px, filtered.max_width_px) == \
        (clean.coverage, clean.length_px, clean.max_width_px)


# --- re-render --------------------------------------------------------------------------------------------


@requires_shared
def test_a_rerender_with_a_new_rule_equals_a_fresh_run(made, tiny_model_dir, photo_dir, threshold, tmp_path):
    # a speck filter other than the default too: the fresh run measures it when it renders, the re-render too
    rules = ["--flag", "crack: max_width > 2px", "--flag", "segment taping area: regions >= 20", "--min_region_px", "40"]
    folder = copy_of(made, tmp_path)
    assert report.main(["--rerender", str(folder), *rules]) == 0
    fresh = tmp_path / "fresh"
    assert report.main(report_argv(photo_dir, tiny_model_dir, fresh, threshold, *rules)) == 0
    assert (folder / "findings.csv").read_bytes() == (fresh / "findings.csv").read_bytes()
    assert (folder / "findings.jsonl").read_bytes() == (fresh / "findings.jsonl").read_bytes()
    flagged = [row["flag_reason"] for row in read_csv(folder / "findings.csv") if row["flagged"] == "yes"]
    assert flagged and all(reason.startswith(("max_width", "regions")) for reason in flagged)
    run = json.loads((folder / "run.json").read_text())
    assert run["arguments"]["flag"] == ["crack: max_width > 2px", "segment taping area: regions >= 20"]
    assert list(run["rerenders"][-1]["changed"]) == ["--flag", "--min_region_px"]
    assert run["rerenders"][-1]["changed"]["--flag"]["then"] == ["coverage > 0.5%"]


@requires_shared
def test_min_region_px_lowers_region_counts_and_leaves_the_masks_alone(made, tmp_path):
    folder = copy_of(made, tmp_path)
    masks = files_of(folder / "masks")
    assert report.main(["--rerender", str(folder), "--min_region_px", "0"]) == 0
    unfiltered = read_csv(folder / "findings.csv")
    assert report.main(["--rerender", str(folder), "--min_region_px", "100"]) == 0
    filtered = read_csv(folder / "findings.csv")
    pairs = [(int(a["regions"]), int(b["regions"])) for a, b in zip(unfiltered, filtered) if a["status"] == "ok"]
    assert all(after <= before for before, after in pairs) and sum(after < before for before, after in pairs) >= 6
    assert max(before for before, _ in pairs) > 20  # the tiny model's masks are noisy: the test means something
    assert files_of(folder / "masks") == masks
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert "regions under 100 px were dropped before measuring" in page
    run = json.loads((folder / "run.json").read_text())
    assert [record["changed"]["--min_region_px"] for record in run["rerenders"]] == \
        [{"then": 16, "now": 0}, {"then": 0, "now": 100}]


@requires_shared
@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_missing_or_altered_mask_is_refused_by_name_and_nothing_changes(damage, made, tmp_path, capsys):
    folder = copy_of(made, tmp_path)
    mask = read_csv(folder / "findings.csv")[2]["mask"]
    if damage == "missing":
        (folder / mask).unlink()
    else:
        pixels = np.asarray(Image.open(folder / mask)).copy()
        pixels[0, 0] = 255 - pixels[0, 0]
        Image.fromarray(pixels).save(folder / mask)
    before = files_of(folder)
    code = exit_code(report.main, ["--rerender", str(folder), "--flag", "regions > 1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:")
    assert mask in err and ("is missing" if damage == "missing" else "changed since it was measured") in err
    assert files_of(folder) == before


@requires_shared
def test_rerender_with_a_review_file_imports_no_torch(made, tmp_path):
    folder = copy_of(made, tmp_path)
    rows = read_csv(folder / "findings.csv")
    rows[0].update(review="accepted", note="tape again, 40 cm")
    rows[1].update(review="REJECTED")  # a spreadsheet's capitals
    rows[4]["photo"] = Path(rows[4]["photo"]).name  # a photo named by its file name (photo01.jpg)
    rows[4].update(review="", note="look again in daylight")  # open, with a note
    punch_list = write_csv(tmp_path / "punch-list.csv", rows)
    # a folder from before run.json kept the model's facts, whose model is not at hand: no model, no network
    run = json.loads((folder / "run.json").read_text())
    run["arguments"]["model"] = "org/a-model-elsewhere"
    for key in ("threshold", "threshold_origin", "model_card"):
        del run[key]
    (folder / "run.json").write_text(json.dumps(run))
    completed = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "--rerender", str(folder), "--review",
                                str(punch_list)], cwd=REPO, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    findings = read_csv(folder / "findings.csv")
    assert [(row["review"], row["note"]) for row in findings[:5]] == [
        ("accepted", "tape again, 40 cm"), ("rejected", ""), ("open", ""), ("open", ""), ("open", "look again in daylight")]
    assert {row["review"] for row in findings[5:]} == {"open"}
    assert [json.loads(line)["review"] for line in (folder / "findings.jsonl").read_text().splitlines()[:2]] == \
        ["accepted", "rejected"]
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert 'value="tape again, 40 cm"' in page and 'data-review="accepted"' in page
    assert f"{run['arguments']['threshold']:g}: given on the command line" in page
    run = json.loads((folder / "run.json").read_text())
    assert run["rerenders"][-1]["review"] == {"file": str(punch_list), "accepted": 1, "rejected": 1, "open": 14}
    assert report.main(["--rerender", str(folder), "--severity_bands", "0.05,0.1,0.2"]) == 0  # keeps the review
    assert read_csv(folder / "findings.csv")[0]["review"] == "accepted"


@requires_shared
@pytest.mark.parametrize("problem, words", [
    ({"review": "maybe"}, "line 2: review 'maybe' is not one of accepted, rejected, open"),
    ({"photo": "nowhere.jpg"}, "line 2: 'nowhere.jpg' is not a photo of this report"),
    ({"prompt": "segment paint"}, "line 2: 'segment paint' is not a prompt of this report"),
    ({"photo": "photo00.jpg"}, "line 2: 'photo00.jpg' names more than one photo of this report"),  # and other/
])
def test_a_bad_review_file_is_one_error_line_naming_the_line(problem, words, made, tmp_path, capsys):
    folder = copy_of(made, tmp_path)
    rows = read_csv(folder / "findings.csv")
    rows[0].update(problem)
    punch_list = write_csv(tmp_path / "punch-list.csv", rows)
    before = files_of(folder)
    code = exit_code(report.main, ["--rerender", str(folder), "--review", str(punch_list)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(punch_list) in err and words in err, err
    assert files_of(folder) == before


@requires_shared
def test_a_scale_file_gives_some_photos_mm_and_the_page_names_the_rest(made, tmp_path, capsys):
    folder = copy_of(made, tmp_path)
    scales = write_csv(tmp_path / "scales.csv", [{"photo": "photo01.jpg", "mm_per_pixel": "0.2"},
                                                 {"photo": "photo02.jpg", "mm_per_pixel": "0.1"}])
    assert report.main(["--rerender", str(folder), "--scale_file", str(scales), "--flag", "crack: max_width > 0.5mm"]) == 0
    rows = [row for row in read_csv(folder / "findings.csv") if row["status"] == "ok"]
    for row in rows:
        scale = {"photo01.jpg": "0.2000", "photo02.jpg": "0.1000"}.get(Path(row["photo"]).name, "")
        assert row["mm_per_pixel"] == scale
        if row["prompt"] == "segment crack":
            assert bool(row["max_width_mm"]) == bool(row["severity"]) == bool(scale)
            assert (row["flagged"] == "yes") == (bool(scale) and float(row["max_width_mm"]) > 0.5)
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert "in pixels, not in the scale file (4)" in page and "<code>photo03.jpg</code>" in page
    before = files_of(folder)
    write_csv(scales, [{"photo": "photo01.jpg", "mm_per_pixel": "0.2"}, {"photo": "phot02.jpg", "mm_per_pixel": "0.1"}])
    assert exit_code(report.main, ["--rerender", str(folder), "--scale_file", str(scales)]) == 2
    assert "'phot02.jpg' is not a photo of this report" in capsys.readouterr().err
    assert files_of(folder) == before


def test_rerender_refuses_a_folder_that_is_not_a_finished_report(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"arguments": {"prompts": ["segment crack"]}}))
    for folder, words in ((tmp_path / "none", "no such folder"), (tmp_path, "no findings.jsonl")):
        assert exit_code(report.main, ["--rerender", str(folder)]) == 2
        assert words in capsys.readouterr().err
    assert exit_code(report.main, ["--rerender", str(tmp_path), "--mm_per_pixel", "0.1", "--scale_file", "s.csv"]) == 2
    assert "not both" in capsys.readouterr().err
    assert exit_code(report.main, ["--rerender", str(tmp_path), "photos/", "--model", "m"]) == 2
    assert "takes no photos, model or segmenter options: photos/ --model m" in capsys.readouterr().err


# --- the review in the browser ----------------------------------------------------------------------------


def finding_rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#findings tbody tr")


@requires_shared
@requires_chromium
def test_review_survives_a_reload_and_exports_a_punch_list(made, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    folder = copy_of(made, tmp_path)
    downloads = tmp_path / "downloads"
    driver = start_chromium(1280, 1000, download_dir=downloads)
    try:
        driver.get((folder / "index.html").as_uri())
        rows = finding_rows(driver)
        first, second = (row.get_attribute("data-key") for row in rows[:2])
        rows[0].find_element(By.CSS_SELECTOR, "button.accept").click()  # the mouse accepts the first ...
        rows[0].find_element(By.CSS_SELECTOR, "input.note").send_keys("tape again, 40 cm", Keys.ENTER)
        driver.find_element(By.TAG_NAME, "body").send_keys("j", "r")  # ... the keys reject the next one
        assert driver.find_element(By.ID, "review-counts").text.startswith("1 accepted, 1 rejected")
        time.sleep(1)  # the page wrote localStorage at once, but Chromium hands it on to its storage asynchronously
        driver.refresh()
        rows = finding_rows(driver)
        state = {row.get_attribute("data-key"): (row.get_attribute("data-review"),
                                                 row.find_element(By.CSS_SELECTOR, "input.note").get_attribute("value"))
                 for row in rows}
        assert state[first] == ("accepted", "tape again, 40 cm") and state[second] == ("rejected", "")
        assert sum(review == "open" for review, _ in state.values()) == len(rows) - 2
        assert driver.find_element(By.ID, "review-counts").text == f"1 accepted, 1 rejected, {len(rows) - 2} open"
        driver.find_element(By.ID, "export").click()
        punch_list = downloads / "punch-list.csv"
        deadline = time.monotonic() + 20
        while not punch_list.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        exported = read_csv(punch_list)
        assert list(exported[0]) == list(read_csv(folder / "findings.csv")[0])  # findings.csv's columns
        assert sorted((row["review"], row["note"]) for row in exported if row["review"] != "open") == \
            [("accepted", "tape again, 40 cm"), ("rejected", "")]
        assert all((folder / row["mask"]).is_file() for row in exported if row["status"] == "ok")
        # the punch list edited in a spreadsheet and put back: the page starts from it, not from the browser
        for row in exported:
            if row["review"] == "accepted":
                row.update(review="rejected", note="not ours: the electrician's")
        assert report.main(["--rerender", str(folder), "--review", str(write_csv(punch_list, exported))]) == 0
        driver.refresh()
        row = next(row for row in finding_rows(driver) if row.get_attribute("data-key") == first)
        assert (row.get_attribute("data-review"),
                row.find_element(By.CSS_SELECTOR, "input.note").get_attribute("value")) == \
            ("rejected", "not ours: the electrician's")
    finally:
        driver.quit()
    assert [row["review"] for row in read_csv(folder / "findings.csv")].count("rejected") == 2


@requires_shared
@requires_chromium
def test_the_page_fits_a_1280_px_window(made, tmp_path):
    """The real page, and one with a long model path, long photo names and long skip reasons."""
    from selenium.webdriver.common.by import By

    folder = copy_of(made, tmp_path)  # the stressed page beside the real one, so that its thumbnails load
    run = json.loads((folder / "run.json").read_text())
    rows = [json.loads(line) for line in (folder / "findings.jsonl").read_text().splitlines()]
    long_name = "/site/2026-11-28/level-3/north-corridor/" + "unit-12_wall-B_before-taping_" * 4 + "IMG_1015.jpg"
    for row in rows:
        row["photo"] = row["photo"].replace("photo00", long_name.removesuffix(".jpg"))
        row["skip_reason"] = row["skip_reason"] and row["skip_reason"] + " " + long_name
    arguments = {**run["arguments"], "model": "/models/" + "clipseg-drywall-small-from-scratch-seed-0/" * 4}
    facts = {"threshold": 0.5, "threshold_origin": "the package default", "model_card": "# a card\n" + "x" * 3000}
    summary = page_summary(arguments, facts, ("coverage > 0.5%",), "test")
    stressed = folder / "stressed.html"
    stressed.write_text(render_page(summary, list(dict.fromkeys(row["photo"] for row in rows)), rows), encoding="utf-8")
    driver = start_chromium(1280, 900)
    try:
        for page in (folder / "index.html", stressed):
            driver.get(page.as_uri())
            width, client = driver.execute_script("return [document.documentElement.scrollWidth, "
                                                  "document.documentElement.clientWidth]")
            assert width <= client, (page.name, width, client)
        name = driver.find_element(By.CSS_SELECTOR, "span.name[title$=\"IMG_1015.jpg\"]")
        assert name.size["width"] < 200  # cut short, whole on hover (its title)
    finally:
        driver.quit()
