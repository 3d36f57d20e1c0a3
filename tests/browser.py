"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for tests that look
at a page the way a user does: load it (with a header the page's server wants, such as a token),
wait until its scripts have drawn what is expected, read its text, list the resources that failed
to load, take a screenshot.

No browser library is used: the protocol is JSON over a WebSocket (websocket-client, which the
kubernetes client already brings). https://chromedevtools.github.io/devtools-protocol/
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class Browser:
    """One headless browser with one page. Use as a context manager: the browser is killed on exit."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 900, timeout_s: float = 60):
        self.executable = executable or find_browser()
        if not self.executable:
            raise RuntimeError("no Chromium found (apt-get install chromium)")
        self.size, self.timeout_s = (width, height), timeout_s
        self.failed: list[str] = []  # "URL: reason" of each resource that did not load
        self._next_id = 0

    def __enter__(self) -> "Browser":
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        # Its output goes to a file: a pipe nobody reads would stall a chatty browser.
        self._log = open(Path(self._profile) / "chromium.log", "w")
        self._process = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            port = self._devtools_port()
            self._socket = websocket.create_connection(self._page_socket(port), timeout=self.timeout_s,
                                                       suppress_origin=True)
        except BaseException:
            self.__exit__()
            raise
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def __exit__(self, *exc) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            # Asked to close, Chromium removes its /tmp/org.chromium.Chromium.* singleton folder;
            # killed (or sent SIGTERM) it leaves one behind per test run.
            with contextlib.suppress(Exception):
                socket.settimeout(10)
                self.call("Browser.close")
            socket.close()
        try:
            self._process.wait(timeout=10 if socket is not None else 0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=30)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _devtools_port(self) -> int:
        """Chromium writes the port it chose into DevToolsActivePort in its profile folder."""
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self._process.poll() is not None:
                break
            time.sleep(0.1)
        log = (Path(self._profile) / "chromium.log").read_text()[-2000:]
        raise RuntimeError(f"{self.executable} did not start its DevTools endpoint:\n{log}")

    def _page_socket(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.2)
        raise RuntimeError(f"{self.executable} opened no page")

    def call(self, method: str, **params) -> dict:
        """Send one command; return its result. Events that arrive meanwhile are recorded."""
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)
        raise TimeoutError(method)

    def _record(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Network.responseReceived" and params["response"]["status"] >= 400:
            self.failed.append(f"{params['response']['url']}: HTTP {params['response']['status']}")
        elif event.get("method") == "Network.loadingFailed" and not params.get("canceled"):
            self.failed.append(f"{params.get('requestId')}: {params.get('errorText')}")

    def open(self, url: str, headers: dict[str, str] | None = None) -> None:
        if headers:
            self.call("Network.setExtraHTTPHeaders", headers=headers)
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None, reload_every_s: float | None = None) -> bool:
        """Poll a JavaScript expression until it is true (False at the deadline); with
        `reload_every_s`, reload the page that often meanwhile, as a user presses refresh on a page
        that does not update itself (the Ray dashboard's Actors page did not, in a headless run)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        reloaded = time.monotonic()
        while time.monotonic() < deadline:
            try:
                if self.evaluate(expression):
                    return True
                if reload_every_s and time.monotonic() - reloaded >= reload_every_s:
                    self.call("Page.reload")
                    reloaded = time.monotonic()
            except RuntimeError:
                pass  # the page was navigating: its context went away; ask the new one
            time.sleep(0.25)
        return False

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
