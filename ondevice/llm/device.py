"""The Python API: one long-lived device that streams speculative generations.

::

    from ondevice import Device
    from ondevice.llm.policies import PolicyConfig

    async with Device(draft="D.gguf", edge="http://edge:8470", meter="sim",
                      policy=PolicyConfig("gelato", power_budget_w=4.0)) as dev:
        async for piece in dev.stream("Once upon a time", max_tokens=64, seed=1):
            print(piece.text, end="", flush=True)
        report = dev.last_report  # the fields of ``ondevice generate --json``

A ``Device`` holds, for its whole life, what a generation needs and what is worth keeping
between prompts: the draft model and its llama.cpp context, the meter (sampling all along,
one continuous window), the drafting policy (GELATO's virtual queue and estimators carry
over from one prompt to the next), zeroconf discovery (``EdgeBrowser``) and the sockets to
edges (``EdgePool``: one socket per edge, a new session on it per prompt). Each prompt runs
the one generation loop, ``ondevice.llm.generate.Generation``; its per-commit hook feeds an
incremental detokenizer (``TextStream``) whose pieces ``stream`` yields as they come.

One generation at a time: a second ``stream`` waits until the first has ended. ``DeviceSync``
is the same for scripts without asyncio (its event loop runs in a background thread, so the
meter keeps sampling between calls).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hw import Activity, PowerMeter
from ondevice.common.seed import seed_problem
from ondevice.edge.client import EdgePool, transport_problem
from ondevice.edge.discovery import EdgeBrowser
from ondevice.llm.policies import Policy, PolicyConfig
from ondevice.llm.textstream import StopCut, TextStream

if TYPE_CHECKING:  # llama.cpp loads with the generation loop, on first use, not on import
    from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner
    from ondevice.llm.generate import EdgePlan
    from ondevice.llm.report import Report


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of streamed output: the text that ``tokens`` completed.

    ``text`` may be "" while a multi-byte character is incomplete, and the last piece of a
    stream may carry text but no tokens (the decoder's flush, or text held back while it could
    have begun a stop string). The pieces' texts concatenate to the report's ``text``.
    """

    text: str
    tokens: tuple[int, ...]


def draft_config(path: str | Path, *, n_ctx: int | None = None,
                 n_threads: int | None = None) -> LlamaConfig:
    """LlamaConfig for the draft: the arguments, else the GGUF's sidecar (written by
    ``model-export llm quantize --preset``), else the defaults."""
    from ondevice.common.llama_runtime import LlamaConfig
    from ondevice.common.model_sidecar import load_sidecar

    # A missing model is reported where it is loaded, with the runtime's message.
    runtime = (load_sidecar(str(path)) or {}).get("runtime", {}) if Path(path).is_file() else {}
    default = LlamaConfig()
    gpu = runtime.get("n_gpu_layers")
    return LlamaConfig(
        n_ctx=n_ctx or runtime.get("n_ctx") or default.n_ctx,
        n_threads=n_threads or runtime.get("n_threads") or default.n_threads,
        n_gpu_layers=default.n_gpu_layers if gpu is None else gpu,
    )


class Device:
    """A draft model on this device, an edge to verify with, a meter and a policy, kept open
    across prompts. Use ``async with Device(...) as dev`` (or ``await dev.open()`` and
    ``await dev.close()``); the common case is ``Device("draft.gguf", edge="http://...")``.

    ``edge``: an edge URL (that edge only); a list of edge URLs (each generation, and each
    resume, placed on the one with the lowest expected wait; a session moves to another when
    its edge dies or drains); None, find compatible edges with zeroconf (as ``ondevice
    generate`` without ``--edge``); or an ``EdgePlan`` (``ondevice.llm.generate``) for
    everything else: discovery beside URLs, interfaces, site, token, TLS pin, timeouts,
    ``require_edge``. ``EdgePlan()`` runs the draft alone.

    ``policy``: a policy name with its defaults, a ``PolicyConfig`` (name and settings: gamma,
    V, a budget, drafting ahead), or a ``Policy`` object; the policy is kept for the Device's
    life. ``meter`` is a SPEC (``docs/meters.md``); with ``require_meter`` a measured meter
    that gives no reading within 3 s makes ``open`` raise ``MeterUnavailable``. ``top_k``:
    draft probabilities sent per drafted token. ``llama_config`` opens the draft; None,
    ``draft_config(draft)`` (the model's sidecar, else the defaults).

    The constructor checks the arguments (ValueError) and loads nothing.
    """

    def __init__(
        self,
        draft: str | Path,
        *,
        edge: str | Sequence[str] | EdgePlan | None = None,
        policy: str | PolicyConfig | Policy = "gelato",
        meter: str = "sim",
        require_meter: bool = True,
        top_k: int = 32,
        llama_config: LlamaConfig | None = None,
    ) -> None:
        from ondevice.llm.generate import EdgePlan

        self.draft_path = Path(draft)
        if isinstance(edge, EdgePlan):
            plan = edge
        elif edge is None or isinstance(edge, str):
            plan = EdgePlan(url=edge, discover=edge is None)
        elif isinstance(edge, (list, tuple)) and edge and all(isinstance(u, str) for u in edge):
            plan = EdgePlan(urls=tuple(edge))
        else:
            raise TypeError("edge must be a URL, a non-empty list of URLs, an EdgePlan or None, "
                            f"not {edge!r:.80}")
        for url in plan.urls:
            problem = transport_problem(url, token=plan.token, fingerprint=plan.fingerprint,
                                        allow_plaintext_token=plan.allow_plaintext_token)
            if problem:
                raise ValueError(problem)
        self.plan = plan
        if isinstance(policy, str):
            policy = PolicyConfig(policy)
        self.policy = policy.make() if isinstance(policy, PolicyConfig) else policy
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.meter_spec = meter
        self.require_meter = require_meter
        self.llama_config = llama_config or draft_config(self.draft_path)
        self.last_report: Report | None = None
        self.model: LlamaModel | None = None  # set while open
        self.meter: PowerMeter | None = None
        self.activity = Activity()
        self.edges: EdgePool | None = None
        self.browser: EdgeBrowser | None = None
        self._runner: LlamaRunner | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[Report] | None = None  # the generation in flight, if any
        self._halt: asyncio.Event | None = None  # its stop event
        self._pieces: dict[int, bytes] = {}  # token -> bytes, for the tokens seen so far

    @property
    def model_id(self) -> str:
        """The draft's file name without ``.gguf``: the model name ``ondevice serve`` lists."""
        name = self.draft_path.name
        return name[: -len(".gguf")] if name.endswith(".gguf") else name

    @property
    def n_ctx(self) -> int:
        """Tokens the draft's context holds (prompt + output); known once open."""
        if self._runner is None:
            raise RuntimeError("the Device is not open")
        return self._runner.n_ctx

    @property
    def busy(self) -> bool:
        """True while a generation runs."""
        return self._task is not None and not self._task.done()

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> Device:
        """Load the draft, start the meter (a first reading in hand), start discovery."""
        from ondevice.llm.generate import open_draft, open_ready_meter

        if self._stack is not None:
            raise RuntimeError("the Device is already open")
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self.model, self._runner = await stack.enter_async_context(
                open_draft(str(self.draft_path), self.llama_config))
            self.meter = await stack.enter_async_context(
                open_ready_meter(self.meter_spec, self.activity, require=self.require_meter))
            plan = self.plan
            uses_edge = self.policy.mode != "device-only" and bool(plan.url or plan.discover)
            if uses_edge and plan.discover:
                self.browser = await stack.enter_async_context(
                    EdgeBrowser(interfaces=plan.interfaces, token=plan.token,
                                site=plan.site))
            self.edges = EdgePool(timeout_s=plan.timeout_s, token=plan.token,
                                  allow_plaintext_token=plan.allow_plaintext_token,
                                  on_bytes=self._on_bytes)
            stack.push_async_callback(self.edges.async_close)
            stack.push_async_callback(self._finish_in_flight)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def close(self) -> None:
        """Stop the generation in flight (after its current step), end the edge sessions,
        stop discovery and the meter, free the model. Idempotent."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self.model = self._runner = self.meter = self.edges = self.browser = None
        self._pieces.clear()

    async def __aenter__(self) -> Device:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_bytes(self, tx: int, rx: int) -> None:
        if tx:
            self.activity.add_tx_bytes(tx)
        if rx:
            self.activity.add_rx_bytes(rx)

    async def _finish_in_flight(self) -> None:
        self.halt()
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait([task])

    # -- generation -------------------------------------------------------------------------

    def halt(self) -> None:
        """Ask the generation in flight to end after its current step (round or token); its
        stream ends normally, with ``stop_reason`` "interrupted". No-op when idle."""
        if self._halt is not None:
            self._halt.set()

    async def tokenize(self, text: str, *, add_special: bool = True,
                       parse_special: bool = False) -> list[int]:
        """The draft's token ids of ``text`` (a BOS first when ``add_special`` and the model
        wants one). With ``parse_special``, special tokens written in the text (a chat
        template's ``<start_of_turn>``...) become those tokens instead of their letters."""
        model = self._require_open()
        if parse_special:
            return await asyncio.to_thread(tokenize_special, model, text,
                                           add_special=add_special)
        return await asyncio.to_thread(model.tokenize, text, add_special=add_special)

    def _piece(self, token: int) -> bytes:
        """The token's bytes, from a cache of the tokens seen (a llama.cpp call saved)."""
        data = self._pieces.get(token)
        if data is None:
            assert self.model is not None
            data = self._pieces[token] = self.model.piece(token)
        return data

    def _require_open(self) -> LlamaModel:
        if self.model is None or self._runner is None:
            raise RuntimeError("the Device is not open: use `async with Device(...)`")
        return self.model

    async def stream(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
        stop: Sequence[str] = (),
        add_bos: bool = True,
        parse_special: bool = False,
        prompt_ids: Sequence[int] | None = None,
        halt: asyncio.Event | None = None,
    ) -> AsyncIterator[Piece]:
        """Generate from ``prompt``, yielding ``Piece``s as tokens are committed; afterwards
        ``last_report`` is this generation's report.

        The output follows the edge's target model (greedy at temperature 0, the same text
        for the same seed); without an edge, the draft's. ``stop`` strings end the text just
        before the first of them (``stop_reason`` "stop"; ``tokens`` still lists everything
        committed, ``returned_tokens`` counts those up to the one that completed the stop
        string). ``parse_special`` reads special tokens written in ``prompt`` as tokens
        (see ``tokenize``); ``prompt_ids`` gives the prompt already tokenized (``prompt`` is
        then its text for the record). Setting ``halt``, or calling ``halt()``, ends the generation
        after its current step. Leaving the iteration early (``break`` inside
        ``contextlib.aclosing``, a cancelled task, a closed client) does the same and waits
        for that step, so the next generation starts on a quiet model; ``last_report`` is
        then what was generated until then.

        Raises ValueError (bad arguments, a prompt that does not fit the draft's context),
        ``EdgeRequired`` (``require_edge`` and no edge usable), ``wire.EdgeError`` (an edge
        configuration error, e.g. a vocabulary mismatch).
        """
        from ondevice.llm.generate import GenerateRequest, Generation

        model = self._require_open()
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if not temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if (problem := seed_problem(seed)) is not None:
            raise ValueError(problem)
        if parse_special and prompt_ids is None:
            prompt_ids = await self.tokenize(prompt, add_special=add_bos, parse_special=True)
        request = GenerateRequest(
            prompt=prompt, max_tokens=max_tokens, temperature=float(temperature), seed=seed,
            top_k=self.top_k, add_bos=add_bos,
            prompt_ids=tuple(prompt_ids) if prompt_ids is not None else None,
        )
        async with self._lock:
            if self._task is not None and not self._task.done():  # an abandoned one's step
                await asyncio.wait([self._task])
            if self._stack is None:
                raise RuntimeError("the Device was closed")
            pieces: asyncio.Queue[Piece | None] = asyncio.Queue()
            text = TextStream(self._piece)
            cut = StopCut(stop)
            self._halt = own_halt = asyncio.Event()

            returned = 0  # tokens whose text was passed to the stop cut
            reported = False  # last_report is this generation's

            def on_tokens(ids: list[int]) -> None:
                nonlocal returned
                if cut.hit is not None:
                    return
                if not cut.stops:
                    out = cut.push(text.feed(ids))
                else:  # token by token: the one that completes a stop string is the last
                    out, used = "", 0
                    while used < len(ids) and cut.hit is None:
                        out += cut.push(text.feed(ids[used:used + 1]))
                        used += 1
                    ids = ids[:used]
                returned += len(ids)
                pieces.put_nowait(Piece(out, tuple(ids)))
                if cut.hit is not None:
                    own_halt.set()

            gen = Generation(
                model, request, self.policy, plan=self.plan, meter=self.meter,
                activity=self.activity, llama_config=self.llama_config, browser=self.browser,
                stop=own_halt, on_tokens=on_tokens, edges=self.edges,
            )
            task = self._task = asyncio.create_task(gen.run(self._runner))
            task.add_done_callback(lambda _t: pieces.put_nowait(None))
            relay = asyncio.create_task(_relay(halt, own_halt)) if halt is not None else None
            try:
                while (piece := await pieces.get()) is not None:
                    yield piece
                report = task.result()
                tail = cut.push(text.flush()) if cut.hit is None else ""
                tail += cut.finish()
                if tail:
                    yield Piece(tail, ())
                if cut.stops:
                    report.text = cut.text
                if cut.hit is not None:
                    report.stop_reason = "stop"
                    report.returned_tokens = returned
                self.last_report, reported = report, True
            finally:
                if relay is not None:
                    relay.cancel()
                if not task.done():
                    own_halt.set()
                    # Wait for the step in flight: the draft's context must be quiet before
                    # anything else uses it. A second cancellation leaves it to the next call.
                    await asyncio.wait([task])
                # Retrieved: an abandoned run's error is not "unhandled"; an abandoned run's
                # report (what it generated before the caller left) is the last one.
                if (task.done() and not task.cancelled() and task.exception() is None
                        and not reported):
                    self.last_report = task.result()
                self._halt = None

    async def complete(self, prompt: str, *,
                       on_piece: Callable[[Piece], object] | None = None,
                       **options: Any) -> Report:
        """Run ``stream`` to its end and return the report (``options`` as ``stream``);
        ``on_piece`` sees each piece as it comes (to time them, say)."""
        async with contextlib.aclosing(self.stream(prompt, **options)) as pieces:
            async for piece in pieces:  # the report is built as the stream ends
                if on_piece is not None:
                    on_piece(piece)
        assert self.last_report is not None
        return self.last_report


def tokenize_special(model: LlamaModel, text: str, *, add_special: bool = True) -> list[int]:
    """``model.tokenize`` with special-token parsing on: ``<start_of_turn>`` written in the
    text is that one token."""
    return model.tokenize(text, add_special=add_special, parse_special=True)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


class DeviceSync:
    """``Device`` for code without asyncio: the same arguments, blocking calls.

    ::

        with DeviceSync("D.gguf", edge="http://edge:8470") as dev:
            for piece in dev.stream("Once upon a time", max_tokens=64):
                print(piece.text, end="", flush=True)
            print(dev.last_report.tokens_per_s)

    The Device lives on an event loop in a background thread for the wrapper's whole life, so
    the meter keeps sampling and the edge sockets stay open between calls. Ctrl-C while
    iterating ``stream`` ends the generation after its current step, then propagates.
    """

    def __init__(self, draft: str | Path, **options: Any) -> None:
        self.device = Device(draft, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "open the DeviceSync first (use `with`)"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def open(self) -> DeviceSync:
        """Start the loop thread and open the Device (what ``Device.open`` raises)."""
        if self._loop is not None:
            raise RuntimeError("the DeviceSync is already open")
        loop = self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="coinfer-device", daemon=True)
        self._thread.start()
        try:
            self._call(self.device.open())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()

    def close(self) -> None:
        """Close the Device and stop the loop thread. Idempotent."""
        if self._loop is None:
            return
        try:
            self._call(self.device.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> DeviceSync:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_report(self) -> Report | None:
        return self.device.last_report

    def stream(self, prompt: str, **options: Any) -> Iterator[Piece]:
        """``Device.stream`` as a blocking iterator (``options`` as there)."""
        assert self._loop is not None, "open the DeviceSync first (use `with`)"
        loop = self._loop
        pieces = self.device.stream(prompt, **options)
        pending: concurrent.futures.Future[Piece] | None = None
        try:
            while True:
                pending = asyncio.run_coroutine_threadsafe(pieces.__anext__(), loop)
                try:
                    piece = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield piece
        finally:
            if pending is not None and not pending.done():  # Ctrl-C while waiting
                loop.call_soon_threadsafe(self.device.halt)
                with contextlib.suppress(BaseException):
                    pending.result()
            self._call(pieces.aclose())

    def complete(self, prompt: str, **options: Any) -> Report:
        """``Device.complete``, blocking."""
        return self._call(self.device.complete(prompt, **options))


__all__ = ["Device", "DeviceSync", "Piece", "draft_config", "tokenize_special"]
