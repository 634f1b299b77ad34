"""Progress on stderr for `model-export`'s long steps: tqdm bars, only on a terminal.

`show_progress` is the one rule every command follows: `progress` None means "when stderr is a
terminal", so piped or captured output never holds bar redraws. `Stages` is a bar over a
known number of steps, some of which are single blocking calls (GGUFReader parsing a 262k-token
vocabulary takes many seconds and reports nothing); a background thread redraws it twice a
second so its elapsed time and the current step's name stay live.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any

REDRAW_S = 0.5  # seconds between redraws of a Stages bar while a step runs


def say(line: str) -> None:
    """Print `line` on stderr without tearing a progress bar that is being drawn there
    (tqdm.write clears the bars, prints, and redraws them)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def show_progress(progress: bool | None) -> bool:
    """Whether to draw bars: `progress` when given, else whether stderr is a terminal."""
    if progress is not None:
        return progress
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Stages:
    """A tqdm bar over `total` named steps on stderr (a context manager).

    ``step(name)`` finishes the previous step (if any) and shows `name` as the current one;
    leaving the context finishes the last step and closes the bar. With `show` False nothing
    is drawn and no thread is started. Other tqdm bars opened meanwhile (a per-tensor bar
    inside a step) stack below it.
    """

    def __init__(self, desc: str, total: int, show: bool) -> None:
        self._desc = desc
        self._total = total
        self._show = show
        self._bar: Any = None
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Stages:
        if self._show:
            from tqdm import tqdm

            self._bar = tqdm(
                desc=self._desc,
                total=self._total,
                unit="step",
                file=sys.stderr,
                bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| {elapsed}{postfix}",
            )
            self._thread = threading.Thread(target=self._redraw, daemon=True)
            self._thread.start()
        return self

    def _redraw(self) -> None:
        while not self._stop.wait(REDRAW_S):
            self._bar.refresh()

    def step(self, name: str) -> None:
        """Finish the running step and start `name`."""
        if self._bar is None:
            return
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(name, refresh=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None and self._started:
            self._bar.update(1)
            self._bar.set_postfix_str("done", refresh=False)
        self._bar.close()
