"""Headless Chromium for the browser tests (JupyterLab in test_browser.py, the website in test_site.py).

The system's Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``) are used, with
the driver path passed explicitly so Selenium Manager never downloads one; without them the tests are skipped,
saying what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
]
INSTALL_HINT = ("needs Chromium and chromedriver from the system packages (/usr/bin/chromium, "
                "/usr/bin/chromedriver; Debian: apt-get install chromium chromium-driver)")

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -r requirements.txt)")
from selenium.webdriver.chrome.service import Service  # noqa: E402

needs_chromium = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)), reason=INSTALL_HINT,
)


@contextmanager
def chromium(profile: Path, extra_flags: tuple[str, ...] = (), network_log: bool = False) -> Iterator[Any]:
    """Headless Chromium driven by the system chromedriver; quits on exit.

    The browser console is logged (``driver.get_log("browser")``); with ``network_log`` every request is
    too (``driver.get_log("performance")``, DevTools ``Network.*`` events).
    """
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + list(extra_flags) + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    prefs = {"browser": "ALL"}
    if network_log:
        prefs["performance"] = "ALL"
    options.set_capability("goog:loggingPrefs", prefs)
    service = Service(CHROMEDRIVER, log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
