"""Headless Chromium for the operator-page test and its screenshot: the system's browser and driver
(Debian: ``apt-get install chromium chromium-driver``) through Selenium, never Selenium Manager (it
would try to download a browser and driver), with Chrome's performance log on so that every request
the page makes can be listed.

    python -m mtdefect.devtools.browser http://localhost:3000 tile.jpg docs/images/operator_page.png

uploads ``tile.jpg`` on a running service's operator page at 1280x800 and saves the screenshot.
The service never imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("MT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MT_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "as root on Debian/Ubuntu: apt-get install -y chromium chromium-driver (.ci/run does this)"

# Quiet, offline-friendly: without the background-networking flags Chromium calls Google services.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only",
    "--password-store=basic",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class BrowserUnavailable(RuntimeError):
    """No usable Chromium + chromedriver + selenium here; the message says what is missing."""


def _executable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def check_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not _executable(p)]
    if missing:
        raise BrowserUnavailable(f"{' and '.join(missing)} not found ({INSTALL_HINT})")
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        raise BrowserUnavailable(f"selenium is not installed (pip install -e '.[test]'): {exc}") from None


class Chromium:
    """One headless Chromium with its own fresh profile folder; ``close()`` removes both."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        check_browser()
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="mtdefect-chromium-"))
        options = Options()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
        try:  # a driver path given to Service: Selenium Manager is skipped
            self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        except WebDriverException as exc:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise BrowserUnavailable(f"Chromium did not start: {' '.join(str(exc).split())[:500]}") from None
        self.urls: list[str] = []
        self.viewport(width, height)
        # Chromium opens on its built-in new-tab page (chrome:// resources): leave it, then start the
        # request list from a blank page, so that it holds what our pages make the browser fetch.
        self.driver.get("about:blank")
        self.forget_requests()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def viewport(self, width: int, height: int) -> None:
        """Exactly width x height CSS pixels of page (the window's frame does not count)."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )

    def requests(self) -> list[str]:
        """Every URL the browser requested so far (all pages, all kinds: documents, scripts,
        images, fetches, websockets), from the performance log's Network events."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                self.urls.append(params["request"]["url"])
            elif message.get("method") == "Network.webSocketCreated":
                self.urls.append(params["url"])
        return list(self.urls)

    def forget_requests(self) -> None:
        """Start a new request list (what was logged so far is dropped)."""
        self.driver.get_log("performance")
        self.urls = []

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    # ---------------------------------------------------------------- the operator page

    def state(self) -> str:
        return self.driver.find_element("id", "app").get_attribute("data-state") or ""

    def wait_for(self, predicate, timeout: float = 90.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached after {timeout:.0f} s (page state {self.state()!r})")

    def upload(self, path: Path, timeout: float = 90.0) -> str:
        """Pick ``path`` in the page's file input and wait until the page is done or shows an error."""
        self.wait_for(lambda: self.state() != "busy", timeout, "page idle")
        self.driver.execute_script("document.getElementById('app').dataset.state = 'submitting';")
        self.driver.find_element("id", "file-input").send_keys(str(Path(path).resolve()))
        self.wait_for(lambda: self.state() in ("done", "error"), timeout, "an answer on the page")
        return self.state()

    def drop(self, name: str, data: bytes, timeout: float = 90.0) -> str:
        """Drop a file with these bytes on the drop zone (a synthetic drop event carrying a real File)."""
        return self.drop_files([(name, data)], timeout)

    def drop_files(self, files: Sequence[tuple[str, bytes]], timeout: float = 90.0) -> str:
        """Drop these files together on the drop zone (one synthetic drop event carrying real Files)."""
        self.wait_for(lambda: self.state() != "busy", timeout, "page idle")
        self.driver.execute_script(
            """
            const [files] = arguments;
            document.getElementById('app').dataset.state = 'submitting';
            const transfer = new DataTransfer();
            for (const [name, bytes] of files) transfer.items.add(new File([new Uint8Array(bytes)], name));
            const zone = document.getElementById('drop');
            const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent('dragover', init));
            zone.dispatchEvent(new DragEvent('drop', init));
            """,
            [[name, list(data)] for name, data in files],
        )
        self.wait_for(lambda: self.state() in ("done", "error"), timeout, "an answer on the page")
        return self.state()


def foreign(urls: Iterable[str], origin: str) -> list[str]:
    """URLs that leave ``origin`` (scheme://host:port); blob: and data: URLs stay in the page."""
    own = urlsplit(origin)
    out = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("blob", "data", "about"):
            continue
        if (parts.scheme, parts.hostname, parts.port) != (own.scheme, own.hostname, own.port):
            out.append(url)
    return out


def screenshot(
    url: str,
    image: Path | Sequence[Path],
    out: Path,
    width: int = 1280,
    height: int = 800,
    api_key: str | None = None,
) -> list[str]:
    """Upload ``image`` on the operator page at ``url`` (several images: dropped together, one tile
    decision); save a width x height screenshot to ``out``. Returns the URLs the browser requested."""
    images = [Path(image)] if isinstance(image, (str, Path)) else [Path(i) for i in image]
    with Chromium(width, height) as browser:
        browser.driver.get(url.rstrip("/") + "/")
        if api_key:
            browser.driver.find_element("id", "api-key").send_keys(api_key)
        if len(images) == 1:
            state = browser.upload(images[0])
        else:
            state = browser.drop_files([(i.name, i.read_bytes()) for i in images])
            browser.wait_for(
                lambda: (
                    len(browser.driver.find_elements("css selector", "#views canvas[data-drawn]"))
                    == len(images)
                ),
                30,
                "views drawn",
            )
        browser.driver.execute_script("document.activeElement && document.activeElement.blur();")
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.driver.save_screenshot(str(out))
        if state != "done":
            raise RuntimeError(f"the page shows an error: {browser.driver.find_element('id', 'error').text}")
        return browser.requests()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the running service, e.g. http://localhost:3000")
    parser.add_argument(
        "image", type=Path, nargs="+", help="a tile image to upload (2 to 6: the photographs of one tile)"
    )
    parser.add_argument("out", type=Path, help="where to write the PNG screenshot")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--api-key", default=os.environ.get("MT_API_KEY"))
    args = parser.parse_args(argv)
    urls = screenshot(args.url, args.image, args.out, args.width, args.height, args.api_key)
    others = foreign(urls, args.url)
    print(
        f"wrote {args.out} ({len(urls)} requests, {len(others)} to other origins{': ' if others else ''}"
        f"{', '.join(others)})"
    )


if __name__ == "__main__":
    main()
