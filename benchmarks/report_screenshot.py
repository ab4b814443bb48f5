"""docs/report.md's screenshot: an inspection report of validation photos, opened in headless Chromium.

Copies 6 crack and 6 joint validation photos from ../shared/data, runs the report on them with the
canonical prompts (`python -m clipseg_drywall.report`), opens REPORT_DIR/index.html from disk and saves
the top of the page as a palette PNG. Needs Debian's `chromium` and `chromium-driver`.

    python benchmarks/report_screenshot.py [--model runs/clipseg-small] [--report_dir runs/report-screenshot]
        [--mm_per_pixel 0.1] [--output docs/report.png]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the first of CANDIDATES)")
    parser.add_argument("--report_dir", type=Path, help="where the report goes (default: a temporary folder)")
    parser.add_argument("--mm_per_pixel", type=float, default=0.1, help="the scale the report states (default: 0.1)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--size", default="1400x1100", help="browser window, WIDTHxHEIGHT")
    args = parser.parse_args()
    model = args.model or next((path for path in CANDIDATES if (path / "config.json").is_file()), None)
    if model is None:
        raise SystemExit("no trained model under runs/: give --model")
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        report_dir = args.report_dir or Path(scratch) / "report"
        photos = validation_photos(Path(scratch) / "photos")
        code = report.main([str(photos), "--model", str(model), "--output", str(report_dir), "--overwrite",
                            "--mm_per_pixel", str(args.mm_per_pixel)])
        if code:
            return code
        driver = chromium(width, height)
        try:
            from selenium.webdriver.support.ui import WebDriverWait

            driver.get((report_dir / PAGE_FILE).resolve().as_uri())
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(IN_VIEW_LOADED))
            driver.save_screenshot(str(Path(scratch) / "page.png"))
        finally:
            driver.quit()
        small_png(Path(scratch) / "page.png", args.output)
    print(f"wrote {args.output} (model {model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
