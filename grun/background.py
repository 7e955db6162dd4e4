"""The background-loop runner: a named daemon thread that runs a step every few seconds, or at once when woken, until
stopped. A step that raises is logged and the loop goes on: one bad round never ends a daemon's housekeeping."""

import logging
import threading
import time
from collections.abc import Callable


class Loop(threading.Thread):
    def __init__(self, name: str, step: Callable[[], None], every: float | Callable[[], float],
                 log: logging.Logger, stop: threading.Event | None = None, gap: float = 0.0):
        """`gap`: at least this long from one step's start to the next; wakes meanwhile join the next."""
        super().__init__(name=name, daemon=True)
        self.step, self.every, self.log, self.gap = step, every, log, gap
        self.stopping = stop or threading.Event()
        self._woken = threading.Event()

    def wake(self) -> None:
        self._woken.set()

    def stop(self, join: float | None = None) -> None:
        self.stopping.set()
        self._woken.set()
        if join is not None and self.is_alive() and threading.current_thread() is not self:
            self.join(join)

    def run(self) -> None:
        last = 0.0
        while not self.stopping.is_set():
            self._woken.wait(self.every() if callable(self.every) else self.every)
            if self.gap:
                self.stopping.wait(last + self.gap - time.monotonic())
                last = time.monotonic()
            self._woken.clear()
            if self.stopping.is_set():
                return
            try:
                self.step()
            except Exception:
                self.log.exception("%s failed; trying again next round", self.name)
