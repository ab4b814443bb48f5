"""The report's screenshots: an inspection report of validation photos, opened in headless Chromium.

Copies 6 crack and 6 joint validation photos from ../shared/data, runs the report on them with the
canonical prompts (`python -m clipseg_drywall.report`), opens REPORT_DIR/index.html from disk and saves
the top of the page as a palette PNG (docs/report.png); then, in a 1280-px-wide window, reviews a few
findings as an inspector would (accept with the mouse and a note, reject and move on with the keys) and
saves the page mid-review (docs/report-review.png). Needs Debian's `chromium` and `chromium-driver`.

    python benchmarks/report_screenshot.py [--model runs/clipseg-small] [--report_dir runs/report-screenshot]
        [--mm_per_pixel 0.1] [--threshold T] [--output docs/report.png] [--review_output docs/report-review.png]

Without --model it uses the first trained model found under runs/ (see `CANDIDATES`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.app_screenshot import MODEL_CANDIDATES, chromium, small_png  # noqa: E402
from clipseg_drywall.report import command as report  # noqa: E402
from clipseg_drywall.report.page import PAGE_FILE  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
PHOTOS_PER_TASK = 6
CANDIDATES = [REPO / "runs" / "clipseg-small", *MODEL_CANDIDATES]  # the README set-up's model first
# the thumbnails load lazily: wait for those in the window before the screenshot
IN_VIEW_LOADED = ("return Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight)"
                  ".every(i => i.complete && i.naturalWidth > 0)")


def validation_photos(folder: Path) -> Path:
    """6 crack and 6 joint validation photos, copied into `folder` under short names."""
    crack = sorted((SHARED_DATA / "cracks" / "valid" / "images").glob("*.jpg"))[:PHOTOS_PER_TASK]
    joints = sorted((SHARED_DATA / "drywall-join-detect" / "valid").glob("*.jpg"))[:PHOTOS_PER_TASK]
    if len(crack) + len(joints) < 2 * PHOTOS_PER_TASK:
        raise SystemExit(f"validation photos not found in {SHARED_DATA}")
    folder.mkdir(parents=True, exist_ok=True)
    for index, photo in enumerate(crack + joints):
        kind = "crack" if index < len(crack) else "joint"
        shutil.copyfile(photo, folder / f"{kind}-{index % PHOTOS_PER_TASK + 1:02d}.jpg")
    return folder


def review_a_few(driver) -> None:
    """Accept the worst finding with a note (the mouse), reject the next, accept the one after with the keys,
    and leave the cursor on the fourth: a review under way, with the table's review columns in view."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rows = driver.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
    rows[0].find_element(By.CSS_SELECTOR, "button.accept").click()
    rows[0].find_element(By.CSS_SELECTOR, "input.note").send_keys("re-tape joint, 40 cm above socket", Keys.ENTER)
    driver.find_element(By.TAG_NAME, "body").send_keys("j", "r", "j", "a", "j")
    driver.execute_script("document.getElementById('review-help').scrollIntoView()")


def screenshot(driver, page: Path, target: Path, review: bool = False) -> None:
    """The page as a small palette PNG, once the thumbnails in view have loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.resolve().as_uri())
    if review:
        driver.execute_script("localStorage.clear()")  # a review from an earlier run of this script
        driver.refresh()
        review_a_few(driver)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(IN_VIEW_LOADED))
    with tempfile.TemporaryDirectory() as scratch:
        driver.save_screenshot(str(Path(scratch) / "page.png"))
        small_png(Path(scratch) / "page.png", target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the first of CANDIDATES)")
    parser.add_argument("--report_dir", type=Path, help="where the report goes (default: a temporary folder)")
    parser.add_argument("--mm_per_pixel", type=float, default=0.1, help="the scale the report states (default: 0.1)")
    parser.add_argument("--threshold", type=float, help="the report's --threshold (default: the model's calibrated one)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--size", default="1400x1100", help="browser window, WIDTHxHEIGHT")
    parser.add_argument("--review_output", type=Path, default=REPO / "docs" / "report-review.png",
                        help="the page mid-review, in a laptop's 1280-px-wide window")
    parser.add_argument("--review_size", default="1280x900", help="its browser window, WIDTHxHEIGHT")
    args = parser.parse_args()
    model = args.model or next((path for path in CANDIDATES if (path / "config.json").is_file()), None)
    if model is None:
        raise SystemExit("no trained model under runs/: give --model")
    with tempfile.TemporaryDirectory() as scratch:
        report_dir = args.report_dir or Path(scratch) / "report"
        photos = validation_photos(Path(scratch) / "photos")
        threshold = [] if args.threshold is None else ["--threshold", str(args.threshold)]
        code = report.main([str(photos), "--model", str(model), "--output", str(report_dir), "--overwrite",
                            "--mm_per_pixel", str(args.mm_per_pixel), *threshold])
        if code:
            return code
        for size, target, review in ((args.size, args.output, False), (args.review_size, args.review_output, True)):
            driver = chromium(*map(int, size.split("x")))
            try:
                screenshot(driver, report_dir / PAGE_FILE, target, review)
            finally:
                driver.quit()
    print(f"wrote {args.output} and {args.review_output} (model {model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
