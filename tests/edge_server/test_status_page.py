"""``/status`` in a real browser: headless Chromium (Debian's ``chromium``) loads the page while
a small fleet of raw WebSocket devices runs against a real ``edge-server``; the test reads the
rendered DOM twice, sees the devices and the numbers move, keeps a screenshot, and finds no
console error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _chromium import chromium_page, chromium_path
from _edge import edge_server
from _ws_devices import RawDevice, running_fleet

from ondevice.common.llama_runtime import LlamaModel

TOKEN = "edge-status-page-token"
N_CTX = 2048  # room for a few seconds of work per session before a device opens a new one
DEADLINE_S = 60.0
DEVICES = (("dev-a", "draft"), ("dev-b", "draft"), ("<b>dev-c</b>", "stream"))

# The rendered DOM, as the page shows it (text only).
READ = """(() => {
  const cell = (r, c) => r.querySelector("." + c).textContent;
  const state = document.getElementById("state");
  return {
    polls: Number(state.dataset.polls || 0),
    state: state.textContent,
    href: location.href,
    rows: [...document.querySelectorAll("#sessions tr[data-sid]")].map(r => ({
      sid: r.dataset.sid, name: cell(r, "what"), mode: cell(r, "mode"),
      tokens: Number(cell(r, "tokens")), tps: cell(r, "tps"),
      acceptance: cell(r, "acceptance"), draft: cell(r, "draft"),
      sparkline: r.querySelectorAll("svg polyline").length})),
    groups: [...document.querySelectorAll("#sessions tr.group")].map(r => r.textContent),
    injected: document.querySelectorAll("#sessions b").length,
    steps: Number(document.getElementById("e-steps").textContent),
    batch: document.getElementById("e-batch").textContent,
    step_ms: document.getElementById("e-step").textContent,
    kv: document.getElementById("e-kv").textContent,
    advice: document.getElementById("a-advise").textContent,
  };
})()"""


async def _until(page, ok, what: str) -> dict:  # type: ignore[no-untyped-def]
    """Read the DOM until ``ok(read)`` (the page updates once a second)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        read = await page.evaluate(READ)
        if ok(read):
            return read
        assert time.monotonic() < deadline, f"{what}: {read}"
        await page.evaluate("new Promise(r => setTimeout(r, 100))")  # the browser's clock


async def test_status_page_in_chromium(fixture_models: tuple[Path, Path], tmp_path: Path
                                       ) -> None:
    chromium_path()  # skip first, naming the package, before starting an edge
    with LlamaModel(fixture_models[1]) as m:
        vocab_hash = m.vocab_hash()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    t0 = time.monotonic()
    with edge_server(fixture_models[0], "--token-file", str(token_file), "--max-sessions", "4",
                     "--n-ctx", str(N_CTX)) as edge:
        devices = [RawDevice(edge.url, name, mode, vocab_hash, N_CTX, TOKEN)
                   for name, mode in DEVICES]
        names = {d.name for d in devices}
        async with running_fleet(devices), chromium_page(tmp_path) as page:
            await page.goto(f"{edge.url}/status?token={TOKEN}")

            def all_working(read: dict) -> bool:
                return {r["name"] for r in read["rows"] if r["tokens"] > 0} >= names

            first = await _until(page, all_working, "the devices never all appeared")
            second = await _until(
                page, lambda r: r["polls"] > first["polls"] and all_working(r)
                and r["steps"] > first["steps"] and any(x["sparkline"] for x in r["rows"]),
                "the page did not update")
            shot = await page.screenshot(tmp_path / "status.png")
            errors = list(page.errors)
    print(f"\nstatus page screenshot: {shot} ({time.monotonic() - t0:.1f} s)")

    assert errors == []
    assert "token" not in first["href"]  # the page took it out of the address bar
    for read in (first, second):
        rows = {r["name"]: r for r in read["rows"]}
        assert read["injected"] == 0  # a device's name is text, never markup
        assert read["groups"] and all("127.0.0.1" in g for g in read["groups"])
        for name, mode in DEVICES:
            row = rows[name]
            assert row["mode"] == mode
            assert float(row["tps"]) > 0
            if mode == "draft":
                assert 0.0 <= float(row["acceptance"]) <= 1.0
                assert float(row["draft"]) == pytest.approx(4.0)
            else:
                assert row["acceptance"] == "\u2013"
        assert read["kv"].endswith("cells") and not read["kv"].startswith("0 /")
        assert read["advice"] in ("yes: stream", "no: draft")
    before = {r["name"]: (r["sid"], r["tokens"]) for r in first["rows"]}
    after = {r["name"]: (r["sid"], r["tokens"]) for r in second["rows"]}
    assert all(before[n] != after[n] for n in names), (before, after)  # they moved
    assert " / " in second["batch"] and not second["step_ms"].startswith("\u2013")
    assert any(r["sparkline"] for r in second["rows"])


async def test_status_page_says_draining(fixture_models: tuple[Path, Path], tmp_path: Path
                                         ) -> None:
    """While the edge drains (SIGTERM with a session open), the page's header says so."""
    import signal

    from ondevice.edge.client import EdgeClient

    chromium_path()
    with LlamaModel(fixture_models[1]) as m:
        vocab_hash = m.vocab_hash()
    with edge_server(fixture_models[0], "--drain-timeout", "60") as edge:
        async with EdgeClient(edge.url) as device, chromium_page(tmp_path) as page:
            await device.async_open([1, 2, 3], vocab_hash=vocab_hash, draft_model="d",
                                    temperature=0.0, seed=0, top_k=1)
            await page.goto(f"{edge.url}/status")
            serving = await _until(page, lambda r: r["polls"] > 0, "the page never polled")
            assert "DRAINING" not in serving["state"]
            edge.proc.send_signal(signal.SIGTERM)
            draining = await _until(page, lambda r: "DRAINING" in r["state"],
                                    "the page never showed the drain")
            warn = await page.evaluate('document.getElementById("state").className')
            errors = list(page.errors)
        assert edge.proc.wait(30) == 0  # the session closed: the drain ends
    assert warn == "warn" and "1 of 8 sessions open" in draining["state"]
    assert errors == []
