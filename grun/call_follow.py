"""The caller's side of the calls' jobs (grun.calls submits them): each call's follower, started once its job runs,
sends the call, passes its output on to our sys.stdout and sys.stderr, and settles its Future with the value or the
exception of grun.remote_worker's result frame; the calls not settled die with us."""
import atexit
import codecs
import contextlib
import os
import pickle
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from itertools import islice
from typing import Any

from .client import Client, GrunError
from .job import Job
from .remote_worker import ResultReader


class RemoteError(GrunError):
    """A call that produced no value (its job failed, was killed or lost, or its result was not brought back): why,
    with the remote traceback when there is one."""


class CallFuture(Future):
    """A concurrent.futures.Future for one remote call; `job` is its Job. `running()` while its job runs. `cancel()`
    kills the job, a running one too, as dask's cancel does (an Executor's Future cannot cancel a running call)."""

    job: Job
    started = False  # its job started (the Future's own state stays pending: a running call can be cancelled)

    def running(self) -> bool:
        return self.started and not self.done()

    def cancel(self) -> bool:
        cancel_all([self])
        return self.cancelled()


PYTHON_WORDS = {"pass -t with more": "give time= more", "pass -m with what it needs": "give memory= what it needs",
                "--force queues": "force=True queues", "--after:": "after=:", "--afterok:": "afterok=:"}


def in_python(text: str) -> str:
    """A message of grun's in the Python API's words: time=, not -t; `afterok=: no job 9`, not `--afterok: ...`."""
    for cli, python in PYTHON_WORDS.items():
        text = text.replace(cli, python)
    return text


def _writer(name: str) -> Callable[[bytes], None]:
    """Bytes to our sys.stdout or sys.stderr (looked up at each write, so redirections apply)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(data: bytes) -> None:
        if (stream := getattr(sys, name)) is None:
            return
        stream.flush()  # what was printed as text goes first
        if (buffer := getattr(stream, "buffer", None)) is not None:
            buffer.write(data)
        else:
            stream.write(decoder.decode(data))
        (stream if buffer is None else buffer).flush()
    return write


def _outcome(job: Job, label: str, exit_code: int, frame: bytes | None, stderr: bytes = b"") -> tuple[bool, Any]:
    """(True, value) or (False, exception to raise); `stderr`: the start of the job's (its python may lack grun)."""
    if frame is None:
        try:
            info = job.info()
            how = f"{info.get('state', 'ended')} with exit code {info.get('exit', exit_code)}" + (
                f" ({info['error']})" if info.get("error") else "")
            if isinstance(kind := info.get("limit"), str):  # the limit enforced, and the keyword to ask for more
                detail = str(info.get("limit_detail") or "?").replace("-m ", "memory=")  # (learned x learn_memory_factor...)
                had = {"memory": detail, "time": f"{(info.get('limits') or {}).get('time') or info.get('time') or 0:g} s"}
                learned = (info.get("origin") or {}).get(kind, "").startswith("learned")  # (a memory= she never gave)
                return False, RemoteError(f"{label} (job {job.id}) killed at its {kind} limit ({had.get(kind, detail)})" + (
                    f": {'its memory was learned from its last runs; ' * learned}give {kind}= what it needs" * (kind in had)))
            if b"No module named 'grun'" in stderr:
                how += f": python={info['cmd'][0]} cannot import grun: install grun there"
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
        if isinstance(exc, tuple):  # (its type, args and __dict__): rebuilt without its __init__ (grun.remote_worker)
            cls, args, state = exc
            exc = cls.__new__(cls, *args)
            exc.args = args
            exc.__dict__.update(state)
        exc.add_note(where)  # printed with the exception's message, like the rest of its traceback
        return False, exc if isinstance(exc, Exception) else RemoteError(f"{summary}\n{where}")
    except Exception:
        return False, RemoteError(f"{summary}\n{where}")


_pending: set[CallFuture] = set()  # the calls not settled yet, which die with us (atexit): ours, not a fork's
os.register_at_fork(after_in_child=_pending.clear)  # (a Pool's worker, TERMed or exiting, killed its parent's calls)
EXIT_KILL_WAIT = 5.0  # how long our exit or SIGTERM waits for a master to take the kill (not call_timeout: 90 s)
_renewer = threading.Thread()  # (not started: follow_all starts it, in a fork's child again)


def lease() -> float:
    """How long the calls' jobs outlive our last renewal of their leases (we died with kill -9, our host crashed:
    grun.core.leases): $GRUN_CALL_LEASE s, 120 by default (a C call holding the GIL stops our renewals: 10 s of it
    with a lease of 3 s lost a live caller's calls)."""
    with contextlib.suppress(ValueError):
        if (seconds := float(os.environ.get("GRUN_CALL_LEASE") or 120)) > 0:  # (0 would spin the renewer)
            return seconds
    raise GrunError(f"bad $GRUN_CALL_LEASE {os.environ['GRUN_CALL_LEASE']!r}: expected seconds, above 0")


def _renew() -> None:
    """Renew the leases of the calls not settled every lease / 3 s, one call to each master (a failure: next round)."""
    while True:
        with contextlib.suppress(GrunError):  # ($GRUN_CALL_LEASE made bad since: the last good one's pace)
            pace = lease() / 3
        time.sleep(pace)
        _each_master("renew", list(_pending))


def cancel_all(futures: list[CallFuture]) -> None:
    """Kill the jobs of the calls not settled, one kill per master (a failed map of 10,000: one), and cancel them."""
    _each_master("kill", [future for future in futures if not future.done()])
    for future in futures:
        Future.cancel(future)


def _each_master(method: str, futures: list[CallFuture], timeout: float = 90.0) -> None:
    """The master's `method` (kill, renew) over these calls' jobs, one call to each master on a new connection (ours
    may be mid-reply); those killed are no longer ours to kill or renew."""
    if method == "kill":
        _pending.difference_update(futures)
    by_master: dict[tuple, list[int]] = {}
    for future in futures:
        by_master.setdefault((future.job.client.host, future.job.client.port), []).append(future.job.id)
    for (host, port), ids in by_master.items():
        with contextlib.suppress(GrunError):
            client = Client(host, port, connect_wait=5.0)
            client.call_timeout = timeout
            getattr(client, method)(ids)


# The calls not settled die with us, as `grun CMD`'s job does (grun.running.dies_with): at our exit (those not sent
# would wait GRUN_CALL_TIMEOUT for it; the others' results are lost) or SIGTERM; `kill -9` leaves them to their leases.
atexit.register(lambda: _each_master("kill", [*_pending], EXIT_KILL_WAIT))  # (a follower, a daemon thread: no wait)


def _on_sigterm(signum, frame) -> None:
    """Our calls die with us, then we die of SIGTERM as we would have (set only where nobody else handles it)."""
    _each_master("kill", list(_pending), EXIT_KILL_WAIT)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _follow(client: Client, future: CallFuture, label: str, function: bytes, args: bytes) -> None:
    """Send the call, pass its output on, and settle the future with its value or exception."""
    nonce, write_stderr, first_stderr = secrets.token_hex(16).encode(), _writer("stderr"), []
    runs: list[ResultReader] = []  # one a run of the job (retried or re-queued): its output and result count

    def stderr(data: bytes) -> None:  # (its start says when its python has no grun; its node says the limit it died of)
        first_stderr or first_stderr.append(data[:300])
        write_stderr(in_python(data.decode(errors="surrogateescape")).encode(errors="surrogateescape")
                     if b"grun: job " in data else data)
    try:  # (the input a tuple: a map's running calls share its function's bytes, not a copy each)
        code = client.follow(future.job.id, stdin_fd=(nonce + b"\n", function, args), stderr_fd=stderr,
                             on_start=lambda job: runs.append(ResultReader(nonce, _writer("stdout"))),
                             on_note=lambda text: print(f"grun: {in_python(text)}", file=sys.stderr, flush=True),
                             stdout_fd=lambda data: runs[-1].feed(data))
        ok, value = _outcome(future.job, label, code, runs[-1].close(), b"".join(first_stderr))
    except BaseException as exc:
        ok, value = False, exc if isinstance(exc, GrunError) else RemoteError(f"{label} (job {future.job.id}): {exc}")
    _pending.discard(future)
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        future.set_result(value) if ok else future.set_exception(value)


def follow_all(client: Client, label: str, ids: list[int], function: bytes, args: list[bytes]) -> list[CallFuture]:
    """Futures for the calls of one submission (their jobs `ids`; the pickled function, each call's arguments),
    followed by a thread (_start)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    futures = [CallFuture() for _ in ids]
    for future, job_id in zip(futures, ids):
        future.job = Job(client, job_id)
    _pending.update(futures)
    global _renewer
    if not _renewer.is_alive():  # (no lock a fork could copy held: two threads here at once may start two, harmless)
        _renewer = threading.Thread(target=_renew, name="grun-lease", daemon=True)
        _renewer.start()
    threading.Thread(target=_start, args=(client, label, function, list(zip(futures, args))), name="grun-calls",
                     daemon=True).start()
    return futures


START_WINDOW, START_WAIT = 64, 30.0  # how many of a submission's calls not started the master is asked about at once


def _start(client: Client, label: str, function: bytes, calls: list[tuple[CallFuture, bytes]]) -> None:
    """Start each call's follower once its job runs (or ended): threads and connections for the calls running, not the
    queued (a map of 300 took 305 threads and 467 fds). The master is asked about the first START_WINDOW calls not
    started (its queue starts them first), and after a wait in which none started (held, say), the next window too."""
    waiting = {future.job.id: (future, args) for future, args in calls}
    more = 0  # where the next window begins (0: none)
    while waiting:
        window = [*islice(waiting, START_WINDOW), *(islice(waiting, more, more + START_WINDOW) if more else ())]
        try:
            started = client.call("wait_started", window, START_WAIT, wait=client.long_wait)
        except GrunError as exc:
            for future, _ in waiting.values():  # (not a follower each: out of fds, 10,000 threads that fail)
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(exc)
            _each_master("kill", [future for future, _ in waiting.values()], EXIT_KILL_WAIT)  # (and out of _pending)
            return
        if not started:
            more = more + START_WINDOW if more + START_WINDOW < len(waiting) else 0
        for job_id in map(int, started):
            future, args = waiting.pop(job_id)
            if not future.done():  # (cancelled)
                future.started = True
                threading.Thread(target=_follow, args=(client, future, label, function, args),
                                 name=f"grun-call-{job_id}", daemon=True).start()
