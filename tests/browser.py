"""A real Chromium for the dashboard tests: Debian's `chromium` and `chromium-driver`, driven by
Selenium. Nothing is downloaded: the paths are given, so Selenium's own browser manager never runs.
Outside CI a missing browser skips the tests; under CI=true it fails them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Written by every browser test run (the repository ignores /build/); docs/dashboard.png is one.
SCREENSHOT_DIR = ROOT / "build" / "screenshots"
DESKTOP = (1280, 900)
PHONE_WIDTH = 390  # an iPhone 12-15's CSS width: the narrowest phone still widely used
PHONE_HEIGHT = 844


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = "chromium/chromedriver not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the sandbox needs user namespaces, absent as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """What the page wrote to the console as errors since the last call (the log is drained)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def phone_width(driver: Any) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 2, "mobile": True},
    )


def desktop_width(driver: Any) -> None:
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def full_page_screenshot(driver: Any, name: str) -> Path:
    """The whole page, not only the window: the window grows to the document's height."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / name
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = int(metrics["cssContentSize"]["height"])
    width = int(metrics["cssLayoutViewport"]["clientWidth"])
    mobile = width <= PHONE_WIDTH
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
    try:
        path.write_bytes(driver.get_screenshot_as_png())
    finally:
        if mobile:
            phone_width(driver)
        else:
            desktop_width(driver)
    return path
