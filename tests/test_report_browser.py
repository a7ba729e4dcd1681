"""The HTML report in a real browser: headless Chromium renders the table and decodes every image.

Chromium (Debian's ``chromium`` package; ``bash scripts/setup-browser.sh``
installs it) is driven over its DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ending in a NUL byte on file
descriptors 3 and 4), so no driver, Python package, download or network port
is involved. The page is opened from a ``file:`` URL with networking features
switched off, and every request the page makes is recorded: a self-contained
report makes none but its own file and its ``data:`` images.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from eval.analysis import read_loss_log
from eval.leaderboard import build_leaderboard
from eval.report import make_plots, write_html
from tests.test_leaderboard import make_world

CHROMIUM = Path(os.environ.get("CXRFUSE_CHROMIUM", "/usr/bin/chromium"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--remote-debugging-pipe",
)


class DevTools:
    """A minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``.

    Chromium reads commands from its file descriptor 3 and writes replies and
    events to 4; a small ``sh`` wrapper maps our pipes onto them.
    """

    def __init__(self, chromium: Path, user_data_dir: Path, log: Path) -> None:
        args = [str(chromium), *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"]
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null', *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()}); see its log")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout=30.0) -> dict:
        """Send a command and return its ``result``; events seen meanwhile are kept in ``events``."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        """The first event ``method`` (already received or arriving within ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if e.get("method") == method:
                    return e
            seen = len(self.events)
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", timeout=10)
                self.proc.wait(timeout=10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    world = make_world(tmp_path_factory.mktemp("browser_world"))
    board = build_leaderboard(world["dataset"], [world["preds"] / "*.json"], gate=world["gate"])
    runs = [read_loss_log(d) for d in sorted(world["runs"].iterdir())]
    figures = make_plots(board, runs, n_examples=2)
    page = write_html(board, figures, tmp_path_factory.mktemp("report"))
    return {"board": board, "figures": figures, "page": page}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: run `bash scripts/setup-browser.sh` (installs Debian's chromium and "
            "chromium-driver), or set CXRFUSE_CHROMIUM to a Chromium binary"
        )
    tmp = tmp_path_factory.mktemp("chromium")
    dev = DevTools(CHROMIUM, tmp / "profile", tmp / "chromium.log")
    try:
        yield dev
    finally:
        dev.close()


PAGE_STATE = """JSON.stringify({
  title: document.title,
  header: [...document.querySelectorAll('#leaderboard thead th')].map(th => th.textContent),
  rows: [...document.querySelectorAll('#leaderboard tbody tr')].map(tr => ({
    best: tr.classList.contains('best'),
    cells: [...tr.cells].map(td => td.textContent),
    height: tr.getBoundingClientRect().height,
  })),
  perClass: [...document.querySelectorAll('#per-class tbody tr')].map(tr => tr.cells[0].textContent),
  images: [...document.images].map(img => ({
    alt: img.alt, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
    shownW: img.getBoundingClientRect().width, src: img.src.slice(0, 22),
  })),
})"""


def test_report_renders_table_and_images(browser, report, tmp_path):
    board, figures, page = report["board"], report["figures"], report["page"]
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    browser.call("Network.enable", session=session)
    browser.call("Page.enable", session=session)
    browser.call("Page.navigate", {"url": page.as_uri()}, session=session)
    browser.wait_event("Page.loadEventFired")
    res = browser.call("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True}, session=session)
    state = json.loads(res["result"]["value"])

    assert state["title"] == "CXRFuse leaderboard"
    assert state["header"] == board.columns()
    shown = [r["cells"] for r in state["rows"]]
    assert [c[1].removesuffix(" (best)") for c in shown] == [r.name for r in board.rows]
    assert shown == [
        [board.cells(r)[0], f"{r.name} (best)" if r.best else r.name, *board.cells(r)[2:]] for r in board.rows
    ]
    assert [r["best"] for r in state["rows"]] == [r.best for r in board.rows]
    assert all(r["height"] > 5 for r in state["rows"])  # laid out, not hidden
    assert state["perClass"] == [board.class_label(c) for c in board.class_ids]

    assert len(state["images"]) == len(figures) > 10
    for img, fig in zip(state["images"], figures, strict=True):
        assert img["alt"] == fig.title
        assert img["src"] == "data:image/png;base64,"
        assert img["complete"] and img["w"] > 100 and img["h"] > 100, f"{fig.key} did not decode: {img}"
        assert img["shownW"] > 50

    requests = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests

    shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    import base64

    png = base64.b64decode(shot)
    (tmp_path / "screenshot.png").write_bytes(png)
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None and pixels.shape[1] >= 800
    assert (pixels < 100).mean() > 0.002 and (pixels > 200).mean() > 0.3  # dark text on a light page
    browser.call("Target.closeTarget", {"targetId": target})
