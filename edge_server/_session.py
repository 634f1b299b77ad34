"""What the connection knows of a session, of either kind: ``Session``, and the shape of a
frame handler.

A connection (``_connection.Connection``) holds at most one open session, an LLM session
(``_llm_session``) or a DNN task (``_dnn_session``). It owns the session's life: it takes the
place under the limits, registers the session where the edge counts it, and closes it on a
``close`` frame, a bug, a replacing open or the device leaving. A session owns only what it
holds on the engine or the DNN service, freed by ``async_close``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_server._connection import Connection

# A frame's handler: (its connection, the decoded frame, its arrival perf_counter s).
FrameHandler = Callable[["Connection", Any, float], Awaitable[None]]


class Session(ABC):
    """One open session: ``sid`` names it on the wire.

    A session may stream frames of its own beside the frame reader (an LLM ``generate``
    stretch); while it does (``streaming``), its connection takes only ``stop`` and
    ``close`` frames.
    """

    sid: str
    kind: str  # "llm" or "dnn": the label its metrics carry (``_metrics.SESSION_KINDS``)
    peer: str  # the device's address, as the socket saw it

    @abstractmethod
    def describe_status(self, now_s: float) -> dict[str, Any]:
        """The session's row of ``/v1/status`` at ``now_s`` (perf_counter s): at least
        ``sid``, ``kind``, ``peer`` and ``device`` (the name the device gave, None when the
        wire carries none). Cheap: called once per poll."""

    @property
    @abstractmethod
    def streaming(self) -> bool:
        """True while the session streams frames of its own."""

    @abstractmethod
    def request_stop(self) -> None:
        """A ``stop`` frame: the stream in progress, if any, ends after its step."""

    @abstractmethod
    async def async_end_stream(self) -> None:
        """End the stream in progress, if any, after its step, and wait for it."""

    @abstractmethod
    async def async_close(self) -> None:
        """End any stream and free what the session holds. Idempotent."""


def quote(text: str, limit: int = 40) -> str:
    """``repr`` of client-supplied text, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
