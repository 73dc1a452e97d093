"""Stopping a run on a signal: SIGINT and SIGTERM end it the same way (the run's own code then writes
its summary and stays resumable), and a second signal never cuts that cleanup short.

Example:
    >>> with StopOnSignals() as stopper:  # doctest: +SKIP
    ...     stopper.run(play())  # KeyboardInterrupt (Terminated for SIGTERM) once a signal cancelled it
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any

from atari_vlm.errors import Terminated

__all__ = ["StopOnSignals", "signal_name"]


def signal_name(exc: KeyboardInterrupt) -> str:
    """Which signal an interrupt came of, for messages and ``summary.json``'s ``stopped``."""
    return "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"


class StopOnSignals:
    """While a run plays, SIGINT and SIGTERM stop it the same way: the first cancels the playing task
    (its ``finally`` blocks close files and clients) or, outside the event loop, raises
    :class:`KeyboardInterrupt` (:class:`~atari_vlm.errors.Terminated` for SIGTERM); a second only
    says the run is stopping (cleanup is not cut short, so no traceback and a whole summary); a third
    exits at once (the run stays resumable: every finished episode is on disk).

    Installed only in the main thread, and only over Python's default handlers (an embedding program
    that set its own keeps them).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        if any(signal.getsignal(s) is not defaults[s] for s in self.SIGNALS):
            return self
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    def _exception(self) -> KeyboardInterrupt:
        return Terminated() if self.received[0] == signal.SIGTERM else KeyboardInterrupt()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if len(self.received) == 1:
            if self._task is not None and self._loop is not None and not self._task.done():
                self._loop.call_soon_threadsafe(self._task.cancel)
                return
            raise self._exception()
        if len(self.received) == 2:
            os.write(2, b"stopping: closing the run and writing summary.json (signal again to quit now)\n")
            return
        os._exit(128 + signum)  # asked three times: every finished episode is already on disk

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """``asyncio.run(coro)``, cancelled (not interrupted mid-bytecode) by the first signal."""

        async def main() -> Any:
            self._task, self._loop = asyncio.current_task(), asyncio.get_running_loop()
            return await coro

        try:
            with asyncio.Runner() as runner:
                return runner.run(main())
        except asyncio.CancelledError:
            if self.received:
                raise self._exception() from None
            raise
        finally:
            self._task = self._loop = None
