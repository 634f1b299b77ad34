"""Test helper: a headless Chromium driven over the Chrome DevTools Protocol (CDP) with aiohttp.

``chromium`` comes from Debian's package (``apt-get install chromium``; ``.ci/run`` installs
it); ``chromium_path()`` skips the test, naming it, where it is missing. The browser listens
for CDP on 127.0.0.1 only, on a port it picks (``--remote-debugging-port=0``) and writes to
``DevToolsActivePort`` in its profile directory; everything that would reach the internet
(updates, sync, metrics, discovery) is off, so a test talks to 127.0.0.1 alone.

``Page`` is one tab: ``goto`` a URL and wait for its load event, ``evaluate`` JavaScript,
``screenshot`` a PNG; every console error, uncaught exception and browser log entry of level
error is kept in ``errors``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _waiting import wait_until

START_S = 60.0  # for the browser to write its DevTools port (a cold start on a small box)
CALL_S = 60.0  # for one CDP call
FLAGS = (
    "--headless=new", "--no-sandbox",  # the tests run as root in CI: no sandbox there
    "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--no-pings", "--metrics-recording-only", "--password-store=basic",
    "--disable-features=MediaRouter,DialMediaRouteProvider,OptimizationHints,Translate",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--window-size=1280,900",
)


def chromium_path() -> str:
    """The browser's path, else skip the test naming the package."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.skip("needs chromium: apt-get install chromium (Debian's package)")


class Page:
    """One tab over its CDP WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []  # console errors, exceptions, error log entries
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.json()
            if "id" in data:
                fut = self._calls.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._event(data["method"], data.get("params", {}))
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the browser closed its DevTools socket"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append("exception: " + d.get("exception", {}).get(
                "description", d.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            e = params["entry"]
            self.errors.append(f"log ({e['source']}): {e['text']} {e.get('url', '')}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command's result (RuntimeError on a protocol error)."""
        call_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, CALL_S)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._loaded.clear()
        await self.call("Page.navigate", url=url)
        await asyncio.wait_for(self._loaded.wait(), CALL_S)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = await self.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page to ``path``."""
        shot = await self.call("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def async_close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _port(profile: Path, proc: subprocess.Popen, log: Path) -> int:
    """The CDP port the browser wrote to its profile (waits for the file)."""
    active = profile / "DevToolsActivePort"

    def written() -> str:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}: {log.read_text()}")
        return active.read_text().strip() if active.is_file() else ""

    text = await wait_until(written, START_S, "chromium's DevToolsActivePort", poll_s=0.05)
    return int(text.split()[0])


@contextlib.asynccontextmanager
async def chromium_page(tmp: Path) -> AsyncIterator[Page]:
    """A headless Chromium with its profile under ``tmp`` and one tab with Page, Runtime and
    Log events on; the browser and all its processes end when the block does."""
    exe = chromium_path()
    profile = tmp / "chromium-profile"
    profile.mkdir()
    log = tmp / "chromium.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = await _port(profile, proc, log)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            (target,) = [t for t in targets if t["type"] == "page"]
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                try:
                    for domain in ("Page", "Runtime", "Log"):
                        await page.call(f"{domain}.enable")
                    yield page
                finally:
                    await page.async_close()
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """End the browser and the processes it started (its own process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError):  # helpers that outlived the browser
        os.killpg(proc.pid, signal.SIGKILL)
