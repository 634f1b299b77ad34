"""The split-DNN frames of a connection: ``dnn_open``, ``feature`` and ``input``.

A connection's DNN side is one ``_dnn.DnnEndpoint``, made on its first DNN frame (the edge
must serve a DNN: ``edge-server --dnn``) and kept until the socket closes, when it leaves the
bandwidth book. A ``DnnSession`` is the task open on that endpoint; the packets and the
evaluations are the endpoint's business.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edge_server._dnn import DnnEndpoint
from edge_server._session import FrameHandler, Session
from ondevice.common import wire

if TYPE_CHECKING:
    from edge_server._connection import Connection


class DnnSession(Session):
    """The task open on a connection's DNN endpoint; ``opened`` is the edge's reply. A task
    never streams: each ``result`` frame answers a packet of the device's."""

    kind = "dnn"

    def __init__(self, endpoint: DnnEndpoint, opened: wire.DnnOpened, peer: str) -> None:
        self.endpoint = endpoint
        self.opened = opened
        self.sid = opened.session
        self.peer = peer
        self.t_open_s = time.perf_counter()

    @property
    def streaming(self) -> bool:
        return False

    def request_stop(self) -> None:
        return None

    async def async_end_stream(self) -> None:
        return None

    async def async_close(self) -> None:
        if self.endpoint.owns(self.sid):
            self.endpoint.close()

    def describe_status(self, now_s: float) -> dict[str, Any]:
        task = self.endpoint.task if self.endpoint.owns(self.sid) else None
        return {"sid": self.sid, "kind": self.kind, "peer": self.peer,
                "device": task.device if task is not None else None,
                "split": task.split if task is not None else None,
                "packets": task.seq if task is not None else 0,
                "channels": task.channels if task is not None else 0,
                "share": self.opened.share,
                "age_s": round(max(now_s - self.t_open_s, 0.0), 3)}


def _endpoint(conn: Connection) -> DnnEndpoint:
    """The connection's DNN side, made on its first DNN frame (``unknown-model`` when the edge
    serves no DNN); it leaves the bandwidth book when the connection closes."""
    if conn.dnn is None:
        service = conn.state.dnn
        if service is None:
            raise wire.WireError("unknown-model", "this edge serves no DNN (started without "
                                 "--dnn)")
        conn.dnn = DnnEndpoint(service, owner=id(conn), send=conn.send,
                               max_packet_bytes=conn.state.config.max_packet_bytes)
        conn.on_close(conn.dnn.disconnect)
    return conn.dnn


async def _open(conn: Connection, msg: wire.DnnOpen, t_in: float) -> None:
    metrics = conn.state.metrics
    try:
        endpoint = _endpoint(conn)
        endpoint.check_open(msg)

        async def build() -> DnnSession:
            await conn.async_drop_session()  # the endpoint holds one task: the open one first
            return DnnSession(endpoint, endpoint.start(msg), conn.peer)

        session = await conn.async_open(build)
    except wire.WireError as exc:
        metrics.sessions_refused.labels(reason=exc.code).inc()
        raise
    metrics.sessions_opened.labels(kind="dnn").inc()
    metrics.dnn_tasks.inc()
    await conn.send(session.opened)


async def _feature(conn: Connection, msg: wire.Feature, t_in: float) -> None:
    await _endpoint(conn).feature(msg, t_in)


async def _input(conn: Connection, msg: wire.Input, t_in: float) -> None:
    await _endpoint(conn).input(msg, t_in)


DNN_HANDLERS: dict[type, FrameHandler] = {
    wire.DnnOpen: _open,
    wire.Feature: _feature,
    wire.Input: _input,
}
