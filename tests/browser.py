"""Headless Chromium for the browser tests (the demo's page, the report's page): Debian's chromium through
Debian's chromedriver, nothing downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), "/usr/bin/chromedriver"
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None or not Path(CHROMEDRIVER).is_file(),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")


def start_chromium(width: int = 1400, height: int = 1600, download_dir: Path | None = None):
    """A headless Chromium driven by Selenium, with a window of `width` x `height` and, given `download_dir`,
    downloads saved there without asking."""
    pytest.importorskip("selenium", reason="the browser tests need selenium ([test] extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
