"""Test helper: a small fleet of raw WebSocket devices that keep an edge busy until stopped.

Each ``RawDevice`` speaks the wire directly (no draft model in the test process): a
``draft`` device sends verification rounds of ``DRAFT`` tokens, a ``stream`` device asks the
edge for ``generate`` stretches. A device pauses ``THINK_S`` between its requests (a real
device's drafting or reading time, so that the edge is busy but not flooded on a small CI
box) and opens a fresh session under the same name before its context fills.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from ondevice.common import wire

DRAFT = (5, 6, 7, 8)  # a draft device's tokens per round (the fixture draft's ids)
STRETCH = 16  # tokens per generate stretch of a stream device
THINK_S = 0.01  # a device's pause between requests, s
PROMPT = (1, 2, 3, 4, 5)


def round_frame(session: str, draft: tuple[int, ...]) -> wire.Round:
    """A temperature-0 round: k = 1, probability 1 for each drafted token."""
    ids = np.array(draft, np.int32)
    return wire.Round(session, ids, ids[:, None].copy(), np.ones((len(draft), 1), np.float32))


@dataclass
class RawDevice:
    """One device: ``name`` is the draft model it reports in ``open`` (client data)."""

    url: str
    name: str
    mode: str  # "draft" or "stream"
    vocab_hash: str
    n_ctx: int
    token: str | None = None
    sessions: list[str] = field(default_factory=list)  # sids, in order opened
    tokens: int = 0  # tokens committed, all sessions

    async def run(self, stop: asyncio.Event, running: asyncio.Event) -> None:
        """Work until ``stop`` is set; ``running`` is set once the first session is open."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        async with aiohttp.ClientSession(headers=headers) as http, http.ws_connect(
                self.url.replace("http://", "ws://") + wire.WS_PATH) as ws:

            async def ask(msg: wire.Message) -> wire.Message:
                await ws.send_bytes(wire.encode(msg))
                return await receive()

            async def receive() -> wire.Message:
                frame = await ws.receive(timeout=60)
                assert frame.type == aiohttp.WSMsgType.BINARY, frame
                return wire.decode(frame.data)

            while not stop.is_set():
                opened = await ask(wire.Open(np.array(PROMPT, np.int32), self.vocab_hash,
                                             self.name, 0.0, 0, 1))
                assert isinstance(opened, wire.Opened), opened
                self.sessions.append(opened.session)
                running.set()
                used = len(PROMPT)
                while not stop.is_set() and used + STRETCH + len(DRAFT) + 2 < self.n_ctx:
                    if self.mode == "draft":
                        verdict = await ask(round_frame(opened.session, DRAFT))
                        assert isinstance(verdict, wire.Verdict), verdict
                        used += verdict.accepted + 1
                        self.tokens += verdict.accepted + 1
                    else:
                        await ws.send_bytes(wire.encode(wire.Generate(opened.session, STRETCH)))
                        while True:
                            frame = await receive()
                            assert isinstance(frame, wire.Tokens), frame
                            used += int(frame.ids.shape[0])
                            self.tokens += int(frame.ids.shape[0])
                            if frame.done:
                                break
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), THINK_S)
                await ws.send_bytes(wire.encode(wire.Close(opened.session)))


async def _wait_all(events: list[asyncio.Event]) -> None:
    for e in events:
        await e.wait()


@contextlib.asynccontextmanager
async def running_fleet(devices: list[RawDevice]):  # type: ignore[no-untyped-def]
    """Run ``devices`` until the block ends; enter once each has a session open. A device's
    failure is raised when the block ends (or at once, if it fails before opening)."""
    stop = asyncio.Event()
    started = [asyncio.Event() for _ in devices]
    tasks = [asyncio.create_task(d.run(stop, e)) for d, e in zip(devices, started, strict=True)]
    try:
        all_started = asyncio.create_task(_wait_all(started))
        await asyncio.wait([all_started, *tasks], timeout=120,
                           return_when=asyncio.FIRST_COMPLETED)
        if not all_started.done():
            all_started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await all_started
        for t in tasks:
            if t.done():
                t.result()  # a device that failed (or ended) before the fleet ran
        assert all(e.is_set() for e in started), "the fleet did not start in 120 s"
        yield devices
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
