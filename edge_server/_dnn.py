"""The edge's split-DNN service: the tails of a split model with onnxruntime, one session per
task, progressive evaluation of what has arrived, and the bandwidth shares of all devices.

``DnnService`` is opened in the app's ``cleanup_ctx`` (``edge-server --dnn DIR``): it loads
``tail_S.onnx`` for every split of the profile and ``model.onnx`` for edge-only tasks (split 0,
the raw input). Every onnxruntime call runs in the service's own thread pool, so the event
loop never blocks and LLM verification (the app's compute thread) is not held up by tails.

``DnnEndpoint`` is one WebSocket's DNN side: at most one open task (its place under the
session limits is the connection's business, ``_connection.Connection``), its packets fed to a
``FeatureReceiver``; a packet that asks for an evaluation is answered with a ``result`` frame
(top-1, confidence, entropy) computed on the received channels, the rest at their calibration
mean. Bad packets raise ``wire.WireError`` (an ``error`` frame; the socket stays open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_server._bandwidth import BandwidthBook
from ondevice.common import wire
from ondevice.common.dnn_profile import RAW_SPLIT, DnnProfile, load_dnn, top1_summary
from ondevice.common.feature_codec import CodecError, FeatureReceiver

log = logging.getLogger(__name__)

TAIL_EWMA = 0.2  # weight of a new tail run in the mean tail time the edge reports
MAX_DEVICE_ID = 64  # characters


def _session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class DnnService:
    """A split model's tails (and its whole model for raw inputs), ready to run."""

    def __init__(self, root: Path, *, workers: int = 1, intra_threads: int = 1) -> None:
        self.profile: DnnProfile = load_dnn(root)
        self.executor = ThreadPoolExecutor(max(1, workers), thread_name_prefix="edge-dnn")
        self.book = BandwidthBook()
        p = self.profile
        self._tails = {i: _session(s.tail_file, intra_threads) for i, s in p.splits.items()}
        self._full = _session(p.full_file, intra_threads) if p.raw_bytes else None
        self.tail_ms = {i: s.tail_ms for i, s in p.splits.items()}
        self.tail_ms[RAW_SPLIT] = p.full_ms
        self.on_tail: Callable[[float], None] | None = None  # each tail's seconds (metrics)

    @property
    def model_id(self) -> str:
        return self.profile.model_id

    def close(self) -> None:
        """Wait for running tails and free the pool. Idempotent."""
        self.executor.shutdown(wait=True)

    async def run(self, fn: Callable, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def infer(self, split: int, x: np.ndarray) -> tuple[int, float, float, float]:
        """(top-1, confidence, entropy nats, ms) of the tail of ``split`` on feature ``x``
        ``[C, H, W]`` float32, or of the whole model on a normalized input when split is 0.
        Runs in the service's threads."""
        sess = self._full if split == RAW_SPLIT else self._tails[split]
        assert sess is not None
        t0 = time.perf_counter()
        logits = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]  # [K]
        ms = (time.perf_counter() - t0) * 1e3
        top1, conf, entropy = top1_summary(logits)
        return top1, conf, entropy, ms

    def note_tail_ms(self, split: int, ms: float) -> None:
        self.tail_ms[split] += TAIL_EWMA * (ms - self.tail_ms[split])


class DnnTask:
    """What one task has delivered so far: feature packets, or raw input bytes for split 0."""

    def __init__(self, service: DnnService, split: int, device: str) -> None:
        self.split = split
        self.device = device
        self.seq = 0  # packets / slices received
        p = service.profile
        self.receiver: FeatureReceiver | None = None
        self.raw: np.ndarray | None = None
        if split == RAW_SPLIT:
            self.raw = np.zeros(p.raw_bytes, dtype=np.uint8)
            self._have = np.zeros(p.raw_bytes, dtype=bool)
        else:
            self.receiver = p.split(split).codec.receiver()

    def add_packet(self, packet: bytes) -> None:
        if self.receiver is None:
            raise wire.WireError("bad-packet", "this task sends the raw input: use input frames")
        try:
            self.receiver.add(packet)
        except CodecError as exc:
            raise wire.WireError("bad-packet", str(exc)) from None
        self.seq += 1

    def add_input(self, offset: int, data: bytes) -> bool:
        """Take a raw-input slice; True once every byte is in."""
        if self.raw is None:
            raise wire.WireError("bad-packet", "this task sends a feature: use feature frames")
        end = offset + len(data)
        if offset < 0 or not data or end > self.raw.size:
            raise wire.WireError(
                "bad-packet", f"input bytes [{offset}, {end}) outside the {self.raw.size}-byte "
                "input (or empty)")
        self.raw[offset:end] = np.frombuffer(data, dtype=np.uint8)
        self._have[offset:end] = True
        self.seq += 1
        return bool(self._have.all())

    @property
    def channels(self) -> int:
        if self.receiver is not None:
            return self.receiver.channels_received
        return int(self._have.all())


Send = Callable[[wire.Message], Awaitable[None]]


class DnnEndpoint:
    """One connection's DNN side: open, packets, evaluations, close.

    Opening is two steps so that a refused ``dnn_open`` changes nothing: ``check_open``
    raises every refusal and touches no state; ``start`` (after the connection has taken a
    place under the session limits) replaces the open task, if any, and cannot fail. The
    connection owns the session limits; this class only keeps the task.
    """

    def __init__(self, service: DnnService, *, owner: int, send: Send,
                 max_packet_bytes: int) -> None:
        self.service = service
        self.owner = owner
        self.send = send
        self.max_packet_bytes = max_packet_bytes
        self.sid: str | None = None
        self.task: DnnTask | None = None
        self._evaluator: asyncio.Task[None] | None = None
        self._wanted = False
        self._wanted_t_in = 0.0

    def _task(self, sid: str) -> DnnTask:
        if self.task is None or sid != self.sid:
            raise wire.WireError("unknown-session", f"no open DNN session {sid!r} on this "
                                 "connection")
        return self.task

    def owns(self, sid: str) -> bool:
        return self.sid is not None and sid == self.sid

    @property
    def is_open(self) -> bool:
        """A task is open on this connection."""
        return self.sid is not None

    def check_open(self, msg: wire.DnnOpen) -> None:
        """Raise the ``WireError`` this edge refuses ``msg`` with, if any. Changes nothing."""
        svc, p = self.service, self.service.profile
        if msg.version != wire.PROTOCOL_VERSION:
            raise wire.WireError("protocol", f"device speaks protocol {msg.version}, edge "
                                 f"{wire.PROTOCOL_VERSION}")
        if msg.model != svc.model_id:
            raise wire.WireError("unknown-model", f"this edge serves DNN {svc.model_id!r}, not "
                                 f"{msg.model!r}")
        if msg.split == RAW_SPLIT:
            if not p.raw_bytes:
                raise wire.WireError("unknown-model", f"{p.name} takes normalized inputs: no "
                                     "raw-input (edge-only) path")
        elif msg.split not in p.splits:
            raise wire.WireError("unknown-model", f"{p.name} has no split {msg.split} (splits "
                                 f"{sorted(p.splits)})")
        elif msg.codec != p.splits[msg.split].fingerprint:
            raise wire.WireError("codec-mismatch", f"split {msg.split}: device codec "
                                 f"{msg.codec}, edge {p.splits[msg.split].fingerprint} (copy "
                                 "the same model-export output to both)")
        if not msg.device or len(msg.device) > MAX_DEVICE_ID:
            raise wire.WireError("bad-frame", f"device id must be 1..{MAX_DEVICE_ID} characters")
        if not (math.isfinite(msg.deadline_ms) and msg.deadline_ms >= 0.0):
            raise wire.WireError("bad-frame", "deadline_ms must be a finite number >= 0")
        try:
            svc.book.check(queue_j=msg.queue_j, bits=float(msg.bits),
                           spectral_eff=msg.spectral_eff)
        except ValueError as exc:
            raise wire.WireError("bad-frame", str(exc)) from None

    def start(self, msg: wire.DnnOpen) -> wire.DnnOpened:
        """Open the task of a ``msg`` that passed ``check_open`` (closing the open one, if
        any) and return the reply for the device."""
        svc = self.service
        now = time.monotonic()
        svc.book.report(msg.device, queue_j=msg.queue_j, bits=float(msg.bits),
                        spectral_eff=msg.spectral_eff, now=now, owner=self.owner)
        self.close()
        self.sid = secrets.token_hex(8)
        self.task = DnnTask(svc, msg.split, msg.device)
        share, users = svc.book.share(msg.device, now)
        return wire.DnnOpened(self.sid, share, users, svc.tail_ms[msg.split])

    async def feature(self, msg: wire.Feature, t_in: float) -> None:
        task = self._task(msg.session)
        if len(msg.packet) > self.max_packet_bytes:
            raise wire.WireError("bad-packet", f"packet of {len(msg.packet)} bytes; this edge "
                                 f"takes at most {self.max_packet_bytes}")
        if task.receiver is None:
            raise wire.WireError("bad-packet", "this task sends the raw input: use input frames")
        if msg.packet:  # an empty packet only asks for an evaluation
            task.add_packet(msg.packet)
        if msg.evaluate or not msg.packet or task.receiver.complete:
            self._want_evaluation(task, t_in)

    async def input(self, msg: wire.Input, t_in: float) -> None:
        task = self._task(msg.session)
        if len(msg.data) > self.max_packet_bytes:
            raise wire.WireError("bad-packet", f"input slice of {len(msg.data)} bytes; this "
                                 f"edge takes at most {self.max_packet_bytes}")
        if task.add_input(msg.offset, msg.data):
            self._want_evaluation(task, t_in)

    def _want_evaluation(self, task: DnnTask, t_in: float) -> None:
        """Ask for an answer on what the task holds now. Evaluations coalesce: one tail runs
        at a time per task, always on the newest packets, so packets are taken in as fast as
        they come and the answer to the last one waits for at most one tail run before its
        own (rather than for one run per packet that asked)."""
        if not self._wanted:
            self._wanted_t_in = t_in
        self._wanted = True
        if self._evaluator is None or self._evaluator.done():
            self._evaluator = asyncio.create_task(self._evaluate_loop(task, self.sid or ""))

    async def _evaluate_loop(self, task: DnnTask, sid: str) -> None:
        svc, prof = self.service, self.service.profile
        try:
            while self._wanted and self.task is task:
                self._wanted = False
                t_in, seq, channels = self._wanted_t_in, task.seq, task.channels
                if task.receiver is not None:
                    x = task.receiver.feature()  # [C, H, W], missing channels at their mean
                else:
                    assert task.raw is not None
                    x = prof.normalize(task.raw.reshape(1, *prof.input_shape))[0]
                top1, conf, entropy, ms = await svc.run(svc.infer, task.split, x)
                svc.note_tail_ms(task.split, ms)
                if svc.on_tail is not None:
                    svc.on_tail(ms / 1e3)
                if self.task is not task:
                    return  # the device closed the task meanwhile
                edge_ms = (time.perf_counter() - t_in) * 1e3
                await self.send(wire.Result(sid, seq, top1, conf, entropy, channels, ms,
                                            edge_ms))
        except ConnectionError:
            return  # the device left
        except Exception as exc:  # a bug here must not end the server
            log.exception("DNN evaluation of session %s failed", sid)
            with contextlib.suppress(Exception):
                await self.send(wire.Error("internal", f"{type(exc).__name__}: {exc}"))

    def close(self) -> None:
        """End the open task, if any. Idempotent."""
        if self.sid is None:
            return
        self.sid, self.task = None, None
        self._wanted = False

    async def disconnect(self) -> None:
        """The socket closed: end the task and drop this connection's devices from the book."""
        self.close()
        self.service.book.forget_owner(self.owner)
        ev, self._evaluator = self._evaluator, None
        if ev is not None and not ev.done():
            ev.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ev


def open_service(root: Path, workers: int, intra_threads: int) -> DnnService:
    """Load a split model directory (blocking: run it in a thread)."""
    svc = DnnService(root, workers=workers, intra_threads=intra_threads)
    log.info("serving DNN %s: splits %s%s", svc.model_id, sorted(svc.profile.splits),
             ", raw input" if svc.profile.raw_bytes else "")
    return svc
