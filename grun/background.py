"""The background-loop runner: a named daemon thread that runs a step every few seconds, or at once when woken, until
stopped. A step that raises is logged and the loop goes on: one bad round never ends a daemon's housekeeping. And the
Worker, whose threads run the calls given them (a plugin's hooks)."""

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

IDLE_SECS = 60.0  # a Worker's thread ends after this long without a call


class Loop(threading.Thread):
    def __init__(self, name: str, step: Callable[[], None], every: float | Callable[[], float] | None,
                 log: logging.Logger, stop: threading.Event | None = None, gap: float = 0.0):
        """`every` None: only when woken; `gap`: at least this long from one step's start to the next; wakes meanwhile
        join the next."""
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


class Worker:
    """Daemon threads that run the calls given them, each ending when idle (a call that never returns must not hold up
    the daemon's exit, as a ThreadPoolExecutor's thread would): one, in order (a plugin's notices); `parallel`: each on
    an idle thread or a new one, so a late call holds up no other (a plugin's hooks; on one thread, a job's on_start
    waited out a late node_resources and was called late itself)."""

    def __init__(self, name: str, parallel: bool = False):
        self.name, self.parallel, self.queue, self.lock = name, parallel, queue.SimpleQueue(), threading.Lock()
        self.threads = self.idle = 0  # idle: the threads waiting for work, less the work queued for them

    def submit(self, fn, *args) -> Future:
        future = Future()
        with self.lock:  # (so a thread that finds the queue empty and ends cannot miss this call)
            self.queue.put((future, fn, args))
            if self.parallel and self.idle:
                self.idle -= 1
            elif self.parallel or not self.threads:
                self.threads += 1
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
        return future

    def _run(self) -> None:
        while True:
            try:
                future, fn, args = self.queue.get(timeout=IDLE_SECS)
            except queue.Empty:
                with self.lock:
                    if self.queue.empty():
                        self.threads, self.idle = self.threads - 1, self.idle - self.parallel
                        return
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
            with self.lock:
                self.idle += self.parallel
