"""Python functions run on the cluster: `grun.remote`, `grun.submit_call` and `grun.map`. Each call is one job,
`python -m grun.remote_worker` on a node (our interpreter unless `python=` names another), fed the cloudpickled
function and arguments (so `__main__` functions, lambdas and closures work) as its stdin through the node's side
channel: no file anywhere. Its output reaches our sys.stdout and sys.stderr as it runs; its value or exception
comes back in grun.remote_worker's result frame."""
import secrets
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .call_follow import CallFuture, RemoteError, follow_all  # noqa: F401  (RemoteError: grun's, from here)
from .client import Client, GrunError, job_spec

_default: list[Client] = []
_default_lock = threading.Lock()


def default_client() -> Client:
    """The Client the calls use unless given one: found like the `grun` command finds the master."""
    with _default_lock:
        _default[:] = _default or [Client()]
        return _default[0]


def worker_spec(label: str, python: str | None, resources: dict) -> dict:
    """The job of one call: grun.remote_worker on a node (its stdin, the call, from the caller's follower)."""
    cmd = [python or sys.executable, "-u", "-m", "grun.remote_worker", label]  # -u: prints reach us at once
    return job_spec(cmd, stdin=True, **resources)


def _submit(client: Client | None, func: Callable, calls: list[tuple[tuple, dict]], python: str | None,
            resources: dict) -> list[CallFuture]:
    """Queue one job per (args, kwargs) in one submission, and follow them (grun.call_follow)."""
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
    return follow_all(client, label, ids, payloads, nonces)


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
