"""The abstract :class:`PowerMeter`: one sampling task, blocking I/O in the meter's own thread.

A driver implements four blocking hooks that run in the meter's single worker thread:
``_device_probe`` (once, at ``__aenter__``; raise :class:`MeterError` for a configuration the
user must fix), ``_device_open``, ``_device_read`` (returns the samples that arrived, blocks
at most about ``timeout_s``) and ``_device_close``. ``_device_interrupt`` is called from the
event loop on close to cut a blocking read short.

The sampling task never raises into the caller. A :class:`FrameError` (garbage, short frame,
bad checksum, a timeout) skips one reply; ``max_bad_frames`` of them in a row, or any other
error (unplugged port, wrong model), closes the device, records a gap and reopens it with
exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``). Errors are logged on
the ``hw`` logger, the first of a run at WARNING, repeats at DEBUG.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from hw._integrator import DEFAULT_HISTORY_S, EnergyIntegrator
from hw._types import FrameError, MeterError, PowerSample

__all__ = ["MeterConfig", "PowerMeter"]

_LOG = logging.getLogger("hw")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterConfig:
    """Sampling settings common to every meter; each is also a SPEC option (``,key=value``).

    ``poll_hz``: request rate of polled meters (streaming meters ignore it).
    ``timeout_s``: longest wait for one reply or line.
    ``max_gap_s``: sample spacing above which a window counts as uncovered; default three
    nominal periods (``3 / poll_hz``).
    """

    poll_hz: float = 10.0  # Hz
    timeout_s: float = 1.0  # s
    backoff_s: float = 0.5  # s, first reconnect delay
    backoff_max_s: float = 8.0  # s, reconnect delay cap
    max_bad_frames: int = 5  # consecutive unusable replies before a reconnect
    history_s: float = DEFAULT_HISTORY_S  # s, integrator retention
    max_gap_s: float | None = None  # s

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise ValueError(f"{f.name} must be a finite number > 0, got {v!r}")

    @property
    def gap_s(self) -> float:
        return self.max_gap_s if self.max_gap_s is not None else 3.0 / self.poll_hz


class PowerMeter(abc.ABC):
    """One power source behind one async interface (see the module docstring).

    Use as ``async with meter: ...``; the sampling task runs between ``__aenter__`` and
    ``async_close``. Queries (``energy_j``, ``coverage``, ``gaps``, ``latest``) may be called
    at any time, also after close (they answer from the retained history).
    """

    kind: str = "abstract"  # the SPEC kind; a class may serve several (um24c/25c/34c)
    measured: bool = True  # False only for modelled sources (sim)
    streaming: ClassVar[bool] = False  # True: _device_read blocks for pushed data; no pacing

    def __init__(self, *, config: MeterConfig | None = None) -> None:
        self.config = config or MeterConfig()
        self.integrator = self._make_integrator()
        self.latest: PowerSample | None = None
        self.reconnects = 0
        self.bad_frames = 0
        # Why the meter is not reading now (set on a failure, cleared by the next sample): what
        # a user must see instead of a silent "- W".
        self.last_error: str | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._first_sample: asyncio.Event | None = None
        self.started_t_s: float | None = None

    def _make_integrator(self) -> EnergyIntegrator:
        return EnergyIntegrator(max_gap_s=self.config.gap_s, history_s=self.config.history_s)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} {self.describe()}>"

    def describe(self) -> str:
        """Where the meter reads from, for logs and the CLI."""
        return ""

    # -- driver hooks (blocking, run in the meter's worker thread) -----------------------

    def _device_probe(self) -> None:  # noqa: B027 - optional hook; default: nothing to check
        """Check once that the source can work at all; raise MeterError if not."""

    @abc.abstractmethod
    def _device_open(self) -> None:
        """Open the device (a port, files); raise MeterError or OSError on failure."""

    @abc.abstractmethod
    def _device_read(self) -> list[PowerSample]:
        """Return new samples; block at most about ``timeout_s``; raise on failure."""

    @abc.abstractmethod
    def _device_close(self) -> None:
        """Release the device; must not raise."""

    def _device_interrupt(self) -> None:  # noqa: B027 - optional hook
        """Called on the event loop during close to end a blocking read early."""

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> PowerMeter:
        if self._task is not None or self._closed:
            raise MeterError(f"{self.kind} meter can be entered once")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"hw-{self.kind}"
        )
        try:
            await self._async_call(self._device_probe)
        except BaseException:
            await self.async_close()
            raise
        self.started_t_s = time.monotonic()
        self._first_sample = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._async_run(), name=f"hw-{self.kind}-sampler"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()

    async def async_close(self) -> None:
        """Stop sampling and release the device and thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._device_interrupt()
            self._task.cancel()
            # gather(return_exceptions=True) absorbs the task's own CancelledError but still
            # propagates a cancellation of the task calling async_close.
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            await self._async_wait_pending()
            try:
                await self._async_call(self._safe_close)
            finally:
                self._executor.shutdown(wait=True)  # idle by now: returns at once

    async def async_wait_sample(self, timeout_s: float) -> bool:
        """Wait until the first sample arrived (True) or ``timeout_s`` passed (False).

        Optional: a window that starts before the first sample is simply extrapolated and,
        if the wait was long, reported as uncovered.
        """
        if self.latest is not None:
            return True
        if self._first_sample is None:
            return False
        try:
            await asyncio.wait_for(self._first_sample.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _async_call(self, fn: Callable[[], _T]) -> _T:
        """Run a blocking hook in the meter's thread without blocking the loop."""
        assert self._executor is not None
        cf = self._executor.submit(fn)
        self._pending = cf
        return await asyncio.wrap_future(cf)

    async def _async_wait_pending(self) -> None:
        """Wait until a hook that was running when the task was cancelled has returned."""
        cf = self._pending
        if cf is None or cf.done():
            return
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        cf.add_done_callback(lambda _f: loop.call_soon_threadsafe(done.set))
        await done.wait()

    # -- the sampling task ---------------------------------------------------------------

    async def _async_run(self) -> None:
        cfg = self.config
        backoff_s = cfg.backoff_s
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            samples_before = self.integrator.samples_total
            try:
                await self._async_call(self._device_open)
                if failures:
                    _LOG.info("%s meter %s: reconnected", self.kind, self.describe())
                await self._async_sample_until_error(loop)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never raise into the caller: log, gap, retry
                if self.integrator.samples_total > samples_before:  # it worked for a while
                    backoff_s, failures = cfg.backoff_s, 0
                failures += 1
                self.reconnects += 1
                self.last_error = _describe_error(err)
                self.integrator.mark_break()
                level = logging.WARNING if failures == 1 else logging.DEBUG
                _LOG.log(level, "%s meter %s: %s; retrying in %.2f s", self.kind,
                         self.describe(), _describe_error(err), backoff_s)
                await self._async_call(self._safe_close)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, cfg.backoff_max_s)

    def _safe_close(self) -> None:
        try:
            self._device_close()
        except Exception as err:  # a driver bug must not stop the sampler
            _LOG.debug("%s meter: error while closing: %s", self.kind, _describe_error(err))

    async def _async_sample_until_error(self, loop: asyncio.AbstractEventLoop) -> None:
        cfg = self.config
        period_s = 1.0 / cfg.poll_hz
        bad_in_row = 0
        next_t = loop.time()
        while True:
            try:
                samples = await self._async_call(self._device_read)
            except FrameError as err:
                self.bad_frames += 1
                bad_in_row += 1
                _LOG.debug("%s meter: skipped a frame: %s", self.kind, err)
                if bad_in_row >= cfg.max_bad_frames:
                    raise MeterError(
                        f"{bad_in_row} unusable frames in a row, last: {err}") from err
                samples = []
            else:
                bad_in_row = 0 if samples else bad_in_row
            for s in samples:
                if self.integrator.add(s):
                    self.latest = s
                    self.last_error = None
            if self.latest is not None and self._first_sample is not None:
                self._first_sample.set()
            if self.streaming:
                continue
            next_t += period_s
            now = loop.time()
            if next_t < now - period_s:  # fell behind (slow device): do not burst
                next_t = now
            await asyncio.sleep(max(0.0, next_t - now))

    # -- queries -------------------------------------------------------------------------

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Joules over the monotonic window ``[t0_s, t1_s]``, from the integrator."""
        return self.integrator.energy_j(t0_s, t1_s)

    def coverage(self, t0_s: float, t1_s: float) -> float:
        """Fraction of the window covered by real samples (0..1)."""
        return self.integrator.coverage(t0_s, t1_s)

    def gaps(self, t0_s: float, t1_s: float) -> list[tuple[float, float]]:
        """Uncovered intervals of the window, merged, in time order."""
        return self.integrator.gaps(t0_s, t1_s)

    @property
    def sample_rate_hz(self) -> float:
        """Samples per second over the last two seconds."""
        return self.integrator.sample_rate_hz(time.monotonic())

    @property
    def samples_total(self) -> int:
        return self.integrator.samples_total


def _describe_error(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, MeterError):
        return text
    return f"{type(err).__name__}: {text}"
