"""Admission of sessions: the edge's total and per-client session limits.

A session (an LLM session or a DNN task) takes its place under the limits *before* anything
is awaited for it: ``SessionSlots.reserve`` checks and counts in one step on the event loop,
so opens racing each other (many sockets, one ``open`` each, all at once) can never take more
places than there are. The ``Slot`` it returns is given back exactly once with
``Slot.release()``: when building the session fails, when the device leaves meanwhile, or when
the session closes.

Not thread-safe: the event loop owns it.
"""

from __future__ import annotations

from collections import Counter

from ondevice.common import wire


class Slot:
    """One place under the limits, held by one client until ``release()``."""

    __slots__ = ("_held", "_owner", "client")

    def __init__(self, owner: SessionSlots, client: str) -> None:
        self._owner = owner
        self.client = client
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Give the place back. Idempotent: a second call does nothing."""
        if self._held:
            self._held = False
            self._owner._give_back(self.client)


class SessionSlots:
    """At most ``max_total`` places on the edge and ``max_per_client`` per client address."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        if max_total < 1 or max_per_client < 1:
            raise ValueError("session limits must be >= 1")
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._in_use = 0
        self._per_client: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        """Places held now: open sessions and those being opened."""
        return self._in_use

    def held_by(self, client: str) -> int:
        return self._per_client[client]

    def reserve(self, client: str) -> Slot:
        """Take a place for ``client`` now, or raise ``WireError("too-many-sessions")`` and
        change nothing. Never awaits: the check and the count are one step."""
        if self._in_use >= self.max_total:
            raise wire.WireError(
                "too-many-sessions", f"edge is at its limit of {self.max_total} sessions"
            )
        if self._per_client[client] >= self.max_per_client:
            raise wire.WireError(
                "too-many-sessions",
                f"client {client} already has {self.max_per_client} sessions open",
            )
        self._in_use += 1
        self._per_client[client] += 1
        return Slot(self, client)

    def _give_back(self, client: str) -> None:
        self._in_use -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
