"""The live page in a real browser: headless Chromium from Debian's packages (`chromium`,
`chromium-driver`), driven by Selenium, against a local pod (the sample app behind a local-mode
sidecar with CC = 2, where the page is on by default).

Without Chromium the test is skipped with a message, except under CI (`CI=true`), where it fails:
`.ci/run` installs it. Set `LIVE_SCREENSHOT=path.png` to keep a screenshot of the page under load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import free_port, running, start_sampleapp, start_sidecar

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HELD = 10

pytestmark = pytest.mark.timeout(120)


def _browser_available() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if not missing:
        return
    message = (
        f"no {' or '.join(missing)}: apt-get install chromium chromium-driver "
        "(.ci/run installs them)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="live-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        # Every request the page makes is in the performance log (DevTools' Network domain).
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def requested_urls(driver: Any) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def hold(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /?sleep=60000 HTTP/1.1\r\nHost: pod\r\n\r\n")
    return sock


def test_live_page_follows_a_known_load_and_the_drain() -> None:
    _browser_available()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = start_sampleapp()
    admin = free_port()
    env = {
        "QUEUE_SERVING_PORT": str(free_port()),
        "QUEUEPROXY_ADMIN_PORT": str(admin),
        "QUEUEPROXY_METRICS_PORT": str(free_port()),
        "QUEUEPROXY_USER_METRICS_PORT": str(free_port()),
    }
    args = (
        "--port",
        env["QUEUE_SERVING_PORT"],
        "--upstream-port",
        str(app.port),
        "--concurrency",
        "2",
        "--drain-quiet-period",
        "30",
    )
    with running(app), running(start_sidecar(env, args)) as sidecar, chromium() as driver:
        driver.get(f"http://127.0.0.1:{admin}/live")
        wait = WebDriverWait(driver, 15, poll_frequency=0.1)

        def text(element_id: str) -> str:
            return driver.find_element(By.ID, element_id).text

        def shows(element_id: str, value: str) -> Any:
            return lambda _: text(element_id).split(" ")[0] == value

        wait.until(shows("state", "ready"))  # the page probes like a kubelet in local mode
        held = [hold(sidecar.port) for _ in range(HELD)]
        try:
            wait.until(shows("at-app", "2"))
            wait.until(shows("queued", "8"))
            assert text("at-app") == "2 / 2"
            assert text("queued") == "8 / 20"
            wait.until(lambda _: float(text("s-conc")) >= 9.0)  # the autoscaler's window: 10
            if os.environ.get("LIVE_SCREENSHOT"):
                driver.save_screenshot(os.environ["LIVE_SCREENSHOT"])
        finally:
            for sock in held:
                sock.close()
        wait.until(shows("at-app", "0"))
        wait.until(shows("queued", "0"))
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-conc path")
        assert "desired" in text("kpa-line")
        origin = f"http://127.0.0.1:{admin}/"
        # Chromium's own pages (chrome://, the blank tab) and data: URLs never reach a network.
        urls = [
            url
            for url in requested_urls(driver)
            if not url.startswith(("chrome", "about:", "data:"))
        ]
        assert f"{origin}live" in urls and f"{origin}live/events" in urls
        assert all(url.startswith(origin) for url in urls), urls
        sidecar.proc.send_signal(signal.SIGTERM)
        wait.until(shows("state", "draining"))
        assert "quiet period" in text("drain")
        assert "drain started" in text("events")
