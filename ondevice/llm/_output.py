"""One generation's committed output: what every part of the loop commits to, and through.

The rounds (``_round``), the edge's streamed stretches and the draft alone (``_edge_session``)
all commit through ``Output.accept`` or ``Output.emit``, so the caller's ``on_tokens`` hook
hears of every committed token once, in order, and never of an end-of-generation token. The
same object says when to stop (the budget, an end-of-generation token, the caller's stop) and
why, and runs llama.cpp calls in a worker thread so the event loop stays free for the socket
and the meter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hw import Activity
from ondevice.common.llama_runtime import LlamaModel
from ondevice.llm.draft import DraftStream


class Output:
    """The committed tokens of one generation (``stream.out``) and when it is over.

    ``budget`` is the most tokens the loops aim for (``max_tokens``, or less when the draft's
    context is smaller); a commit is cut at ``max_tokens``. ``stop_reason`` says why the
    generation ended: "max_tokens" until something else ends it ("eos", "context",
    "interrupted").
    """

    def __init__(self, model: LlamaModel, stream: DraftStream, *, max_tokens: int, budget: int,
                 activity: Activity, threads: int,
                 on_tokens: Callable[[list[int]], None] | None = None,
                 stop: asyncio.Event | None = None) -> None:
        self.model, self.stream = model, stream
        self.max_tokens, self.budget = max_tokens, budget
        self.stop_reason = "context" if budget < max_tokens else "max_tokens"
        self._activity, self._threads = activity, threads
        self._on_tokens = on_tokens
        self._stop = stop  # set: finish the step in flight, then end with what is committed

    @property
    def n(self) -> int:
        """Tokens committed so far."""
        return len(self.stream.out)

    def left(self) -> int:
        """Tokens the loops may still commit (0 once the budget is reached)."""
        return self.budget - self.n

    def stopping(self) -> bool:
        """True once the caller asked to stop (Ctrl-C); the loops check it between steps."""
        if self._stop is not None and self._stop.is_set():
            self.stop_reason = "interrupted"
            return True
        return False

    @property
    def stoppable(self) -> bool:
        """Whether the caller can ask to stop (it gave a stop event)."""
        return self._stop is not None

    async def wait_stop(self) -> None:
        """Return once the caller asks to stop; only where it can (``stoppable``)."""
        assert self._stop is not None
        await self._stop.wait()

    def emit(self, tokens: list[int]) -> None:
        """Tell the caller's hook of newly committed tokens (the streaming path)."""
        if tokens and self._on_tokens is not None:
            self._on_tokens(tokens)

    def accept(self, tokens: list[int]) -> bool:
        """Commit tokens, cut at an end-of-generation token or ``max_tokens``; True if the
        generation is over."""
        room = self.max_tokens - self.n
        for i, t in enumerate(tokens[:room]):
            if self.model.is_eog(t):
                self.stream.commit(tokens[:i])
                self.emit(tokens[:i])
                self.stop_reason = "eos"
                return True
        self.stream.commit(tokens[:room])
        self.emit(tokens[:room])
        return self.max_tokens - self.n <= 0

    async def busy(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a llama.cpp call in a worker thread, telling the activity model it is busy."""

        def job() -> Any:
            with self._activity.busy(self._threads):
                return fn(*args, **kwargs)

        return await asyncio.to_thread(job)


__all__ = ["Output"]
