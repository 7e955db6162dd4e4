"""Python functions run on the cluster: `grun.remote`, `grun.submit_call` and `grun.map`. Each call is one job,
`python -m grun.remote_worker` on a node (our interpreter unless `python=` names another), fed the cloudpickled
function and arguments (so `__main__` functions, lambdas and closures work) as its stdin through the node's side
channel: no file anywhere. Its output reaches our sys.stdout and sys.stderr as it runs; its value or exception
comes back in grun.remote_worker's result frame."""
import atexit
import codecs
import contextlib
import os
import pickle
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from itertools import islice
from typing import Any

from .client import Client, GrunError, job_spec
from .job import Job
from .remote_worker import ResultReader


class RemoteError(GrunError):
    """A call that produced no value: the job failed, was killed or lost, or its result could not be
    brought back. The message says why and carries the remote traceback when there is one."""


_default: list[Client] = []
_default_lock = threading.Lock()


def default_client() -> Client:
    """The Client the calls use unless given one: found like the `grun` command finds the master."""
    with _default_lock:
        _default[:] = _default or [Client()]
        return _default[0]


class CallFuture(Future):
    """A concurrent.futures.Future for one remote call; `job` is its Job. Cancelling kills the job."""

    job: Job
    started = False  # its job has run: its follower sends the call

    def cancel(self) -> bool:
        if self.done():
            return False
        _pending.discard(self)
        with contextlib.suppress(GrunError):
            self.job.kill()
        return super().cancel()


def _writer(name: str) -> Callable[[bytes], None]:
    """Bytes to our sys.stdout or sys.stderr (looked up at each write, so redirections apply)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(data: bytes) -> None:
        if (stream := getattr(sys, name)) is None:
            return
        stream.flush()  # what was printed as text goes first
        if (buffer := getattr(stream, "buffer", None)) is not None:
            buffer.write(data)
            buffer.flush()
        else:
            stream.write(decoder.decode(data))
            stream.flush()
    return write


def _outcome(job: Job, label: str, exit_code: int, frame: bytes | None) -> tuple[bool, Any]:
    """(True, value) or (False, exception to raise)."""
    if frame is None:
        try:
            info = job.info()
            how = f"{info.get('state', 'ended')} with exit code {info.get('exit', exit_code)}" + (
                f" ({info['error']})" if info.get("error") else "")
        except GrunError:
            how = f"ended with exit code {exit_code}"
        return False, RemoteError(f"{label} (job {job.id}) {how} without returning a result")
    try:
        outcome = pickle.loads(frame)
    except Exception as exc:
        return False, RemoteError(f"{label} (job {job.id}): cannot load its result here: {type(exc).__name__}: {exc}")
    if outcome[0] == "ok":
        return True, outcome[1]
    _, exc, text, summary = outcome
    where = f"remote traceback of {label} (job {job.id}):\n{text.rstrip()}"
    try:
        exc.add_note(where)  # printed with the exception's message, like the rest of its traceback
        return False, exc if isinstance(exc, Exception) else RemoteError(f"{summary}\n{where}")
    except Exception:
        return False, RemoteError(f"{summary}\n{where}")


_pending: set[CallFuture] = set()  # the calls not settled yet, which die with us (_kill_pending)


def _kill_pending(unsent_only: bool) -> None:
    """Kill the jobs of the calls not settled (`unsent_only`: those not started, whose call was never sent: at our
    exit, so that none starts to wait GRUN_CALL_TIMEOUT for it), on a new connection (ours may be mid-reply), as
    `grun CMD` kills its job when it dies (grun.running.dies_with). A `kill -9` of us leaves them to that timeout."""
    by_master: dict[tuple, list[int]] = {}
    for future in list(_pending):
        if not (unsent_only and future.started):
            by_master.setdefault((future.job.client.host, future.job.client.port), []).append(future.job.id)
    for (host, port), ids in by_master.items():
        with contextlib.suppress(GrunError):
            Client(host, port, connect_wait=5.0).kill(ids)


atexit.register(_kill_pending, True)  # (a follower is a daemon thread: it does not hold our exit for its call)


def _on_sigterm(signum, frame) -> None:
    """Our calls die with us, then we die of SIGTERM as we would have (set only where nobody else handles it)."""
    _kill_pending(False)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _follow(client: Client, future: CallFuture, label: str, payload: bytes, nonce: bytes) -> None:
    """Send the call, pass its output on, and settle the future with its value or exception."""
    stdout = ResultReader(nonce, _writer("stdout"))
    try:
        code = client.follow(future.job.id, stdin_fd=payload, stdout_fd=stdout.feed, stderr_fd=_writer("stderr"))
        ok, value = _outcome(future.job, label, code, stdout.close())
    except BaseException as exc:
        ok, value = False, exc if isinstance(exc, GrunError) else RemoteError(f"{label} (job {future.job.id}): {exc}")
    _pending.discard(future)
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        future.set_result(value) if ok else future.set_exception(value)


def worker_spec(label: str, python: str | None, resources: dict) -> dict:
    """The job of one call: grun.remote_worker on a node (its stdin, the call, from the caller's follower)."""
    cmd = [python or sys.executable, "-u", "-m", "grun.remote_worker", label]  # -u: prints reach us at once
    return job_spec(cmd, stdin=True, **resources)


def _submit(client: Client | None, func: Callable, calls: list[tuple[tuple, dict]], python: str | None,
            resources: dict) -> list[CallFuture]:
    """Queue one job per (args, kwargs) in one submission, each followed by a thread of its own."""
    import cloudpickle
    if not callable(func):
        raise GrunError(f"{func!r} is not callable")
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    client, label = client or default_client(), f"{getattr(func, '__module__', None) or '?'}.{name}"
    nonces = [secrets.token_hex(16).encode() for _ in calls]
    try:
        payloads = [nonce + b"\n" + cloudpickle.dumps((func, *call)) for nonce, call in zip(nonces, calls)]
    except Exception as exc:
        raise GrunError(f"cannot send {label} to the cluster: {type(exc).__name__}: {exc}") from None
    ids = client.submit_many([worker_spec(label, python, resources)] * len(calls)) if calls else []
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    futures = [CallFuture() for _ in ids]
    for future, job_id in zip(futures, ids):
        future.job = Job(client, job_id)
    _pending.update(futures)
    threading.Thread(target=_start, args=(client, label, list(zip(futures, payloads, nonces))), name="grun-calls",
                     daemon=True).start()
    return futures


START_WINDOW = 64  # how many of a submission's calls not started yet the master is asked about at once


def _start(client: Client, label: str, calls: list[tuple[CallFuture, bytes, bytes]]) -> None:
    """Start each call's follower once its job runs (or has ended): a thread and connections for each call running,
    not for each one queued (a map of 300 took 305 threads and 467 fds). The master is asked about the first
    START_WINDOW calls not started, which its queue (first come, first served) starts before the others."""
    waiting = {future.job.id: (future, payload, nonce) for future, payload, nonce in calls}
    while waiting:
        try:
            started = client.call("wait_started", list(islice(waiting, START_WINDOW)), 30.0, wait=client.long_wait)
        except GrunError:  # (a master too old to take a list...): each call's follower waits for its own
            started = list(waiting)
        for job_id in [int(i) for i in started]:  # (map is ours here)
            future, payload, nonce = waiting.pop(job_id)
            if not future.done():  # (cancelled)
                future.started = True
                threading.Thread(target=_follow, args=(client, future, label, payload, nonce),
                                 name=f"grun-call-{job_id}", daemon=True).start()


RESOURCES = ("cpus", "memory", "priority", "hosts", "env", "cwd", "params")  # a job's, as for Client.submit


def submit_call(func: Callable, *args, python: str | None = None, client: Client | None = None,
                **kwargs) -> CallFuture:
    """Queue `func(*args, **kwargs)` as a job and return a Future for its value; the job is on the master's disk
    when this returns (`future.job.id`). `result()` returns the function's value, or raises what it raised
    remotely (same type and value, the remote traceback added as a note), or RemoteError for a job that ended
    without a result. The keywords of RESOURCES (cpus, memory, priority, hosts, env, cwd, params) are the job's,
    as for `Client.submit`; `python` is the node's interpreter (ours by default); every other keyword, the call's."""
    resources = {key: kwargs.pop(key) for key in RESOURCES if key in kwargs}
    return _submit(client, func, [(args, kwargs)], python, resources)[0]


def remote(func: Callable, *args, **kwargs) -> Any:
    """`func(*args, **kwargs)` run on a node: its value (keywords as for submit_call); Ctrl-C kills the job."""
    return _results([submit_call(func, *args, **kwargs)])[0]


def map(func: Callable, iterable: Iterable, *, python: str | None = None, client: Client | None = None,
        timeout: float | None = None, **resources) -> list:
    """`[func(x) for x in iterable]`, each call a job of its own, all queued at once and run in parallel
    with the given resources each (RESOURCES, as for submit_call); results in input order. The first
    failure (in order) is raised, and the calls not yet finished are killed."""
    if unknown := sorted(resources.keys() - set(RESOURCES)):
        raise TypeError(f"map() got unexpected keyword arguments {', '.join(unknown)} (resources: {', '.join(RESOURCES)})")
    return _results(_submit(client, func, [((x,), {}) for x in iterable], python, resources), timeout)


def _results(futures: list[CallFuture], timeout: float | None = None) -> list:
    """Their values in order; at the first failure (or Ctrl-C) the calls not yet finished are killed."""
    try:
        return [f.result(timeout) for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise
