"""docs/demo.md's screenshot: launch the app, drive headless Chromium like a user, save the page.

Uploads one validation photo from ../shared/data, keeps the two default prompts, presses Segment,
waits for the overlay and saves the page as a palette PNG (a figure, kept small). Needs Debian's
`chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`).

    python benchmarks/app_screenshot.py [--model runs/learn-from-scratch/seed0] [--output docs/demo.png]

Without --model it uses the first trained model found under runs/ (see `MODEL_CANDIDATES`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipseg_drywall.app import DEFAULT_PROMPTS, build_demo, example_photos, launch  # noqa: E402
from clipseg_drywall.segmenters.pytorch import Segmenter  # noqa: E402

MODEL_CANDIDATES = [REPO / "runs" / "learn-from-scratch" / "seed0", REPO / "runs" / "lfs-5000" / "seed0"]
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chromium(width: int, height: int):
    """Headless Debian chromium through Debian's chromedriver (nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium")
    if binary is None or not Path(CHROMEDRIVER).is_file():
        raise SystemExit("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def segment_in_browser(driver, url: str, photo: Path, timeout: float = 120) -> None:
    """Open the page, upload `photo`, keep the default prompts, press Segment, wait for overlay and legend."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#photos input[type=file]")).send_keys(str(photo))
    wait.until(lambda d: photo.stem in d.find_element(By.ID, "photos").text)
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlay-0 .legend-item")) == len(DEFAULT_PROMPTS))
    image = driver.find_element(By.CSS_SELECTOR, "#overlay-0 img.base-image")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))


def small_png(source: Path, target: Path, colours: int = 128) -> None:
    """The screenshot as an optimised palette PNG: a README figure, not a photo archive."""
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the first of MODEL_CANDIDATES)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "demo.png")
    parser.add_argument("--photo", type=Path, help="photo to upload (default: the first example photo)")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 1400), metavar=("WIDTH", "HEIGHT"))
    args = parser.parse_args()
    model = args.model or next((m for m in MODEL_CANDIDATES if (m / "model.safetensors").is_file()), None)
    if model is None:
        raise SystemExit(f"no trained model in {[str(m) for m in MODEL_CANDIDATES]}: pass --model")
    photo = args.photo or example_photos()[0]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(Segmenter.from_pretrained(model))
    port = free_port()
    launch(demo, "127.0.0.1", port, block=False)
    driver = chromium(*args.size)
    try:
        segment_in_browser(driver, f"http://127.0.0.1:{port}/", photo)
        with tempfile.TemporaryDirectory() as folder:
            raw = Path(folder) / "page.png"
            if not driver.save_screenshot(str(raw)):
                raise SystemExit("chromium could not take the screenshot")
            small_png(raw, args.output)
    finally:
        driver.quit()
        demo.close()
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KB): model {model}, photo {photo.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
