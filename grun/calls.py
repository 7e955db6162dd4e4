"""Python functions run on the cluster: `grun.remote`, `grun.submit_call` and `grun.map`. Each call is one job,
`python -m grun.remote_worker` on a node (our interpreter unless `python=` names another), fed the cloudpickled
function and arguments (so `__main__` functions, lambdas and closures work) as its stdin through the node's side
channel: no file anywhere. A map's function is pickled once, and its bytes are shared by the calls' inputs (a 20 MB
closure over 40 inputs: 862 MB at the peak when each input held a copy; 72 MB). Its output reaches our
sys.stdout and sys.stderr as it runs; its value or exception comes back in grun.remote_worker's result frame."""
import collections
import hashlib
import inspect
import io
import os
import secrets
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from .call_follow import CallFuture, RemoteError, cancel_all, follow_all, in_python, lease  # noqa: F401  (RemoteError: grun's)
from .client import BadArgument, Client, GrunError, Timeout, check_specs, job_spec  # noqa: F401  (BadArgument: grun's, here too)

_default: list[Client] = []
_default_lock = threading.Lock()


def default_client() -> Client:
    """The Client the calls use unless given one: found like the `grun` command finds the master."""
    with _default_lock:
        _default[:] = _default or [Client()]
        return _default[0]


def worker_spec(label: str, python: str | None, resources: dict, key: str = "-") -> dict:
    """The job of one call: grun.remote_worker on a node (its stdin, the call, from the caller's follower), leased to
    us (grun.call_follow renews it); `key` names the function's code (what learns from its runs: grun.core.learn).
    Our own sys.path entries (the script's directory, `sys.path.append`s; no interpreter's, no site-packages: another
    python= may not load them) are on its PYTHONPATH: cloudpickle sends a module beside the script by name. Bad
    `resources` (cpus=-1, time="soon", after=[None]): BadArgument (job_spec's); the dict itself is left as it was."""
    cmd = [python or sys.executable, "-u", "-m", "grun.remote_worker", label, key]  # -u: prints reach us at once
    ours = [os.path.abspath(p or ".") for p in sys.path if not p.startswith((sys.prefix, sys.base_prefix))
            and not p.endswith(("site-packages", "dist-packages"))]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [*ours, os.environ.get("PYTHONPATH")])),
           **(resources.get("env") or {})}
    return job_spec(cmd, stdin=True, lease=lease(), **{**resources, "env": env})


def code_key(func: Callable) -> str:
    """What names a function's code, so only it learns from its runs (every `f` and `<lambda>` of every script shared
    one key: a tiny one's learned limit killed a big one): a hash of its file and qualname, and a lambda's or a nested
    function's line, bytecode, constants and names (`lambda: f(1)`, `lambda: f(10**9)`, `lambda: g(1)`: its globals,
    attributes, closure variables); '-' for one without Python code."""
    if (code := getattr(getattr(func, "func", func), "__code__", None)) is None:  # (func: a functools.partial's)
        return "-"  # (a builtin: its name is enough)
    def text(code) -> str:  # the same in every run (not a code's repr: its address; a frozenset's order: its hashes)
        # (no map() here: this module's map runs its function on the cluster; it started a personal cluster)
        consts = [text(c) if isinstance(c, types.CodeType) else sorted(repr(x) for x in c) if isinstance(c, frozenset)
                  else c for c in code.co_consts]
        return f"{code.co_code.hex()} {code.co_names + code.co_freevars} {consts!r}"
    nested = f"{code.co_firstlineno} {text(code)}" if "<" in code.co_qualname else ""
    return hashlib.blake2s(f"{code.co_filename} {code.co_qualname} {nested}".encode(), digest_size=6).hexdigest()


def _dumps(cloudpickle) -> Callable[[Any], bytes]:
    """cloudpickle's dumps, its functions' code keeping the name of its file: cloudpickle 3 names each one
    "<dynamic-code>", and the remote traceback then showed no file and none of its lines."""
    reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]

    def code(obj):
        make, args = reduce(obj)
        return make, tuple(obj.co_filename if arg == "<dynamic-code>" else arg for arg in args)

    class Pickler(cloudpickle.Pickler):
        dispatch_table: ClassVar = collections.ChainMap({types.CodeType: code}, cloudpickle.Pickler.dispatch_table)

    def dumps(obj) -> bytes:
        Pickler(out := io.BytesIO()).dump(obj)
        return out.getvalue()
    return dumps


def _submit(client: Client | None, func: Callable, calls: list[tuple[tuple, dict]], python: str | None,
            resources: dict, names: list[str] | None = None) -> list[CallFuture]:
    """Queue one job per (args, kwargs) in one submission, and follow them (grun.call_follow)."""
    import cloudpickle
    if not callable(func):
        raise GrunError(f"{func!r} is not callable")
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    label = f"{getattr(func, '__module__', None) or '?'}.{name}"
    spec = worker_spec(label, python, resources, code_key(func))  # (bad options refused before the pickling: big)
    try:  # the function once; each call's input is its nonce, these bytes and its arguments' (grun.remote_worker)
        dumps = _dumps(cloudpickle)  # (and the functions among the arguments)
        function, args = dumps(func), [dumps(call) for call in calls]
    except Exception as exc:
        raise GrunError(f"cannot send {label} to the cluster: {type(exc).__name__}: {exc}") from None
    specs = [dict(spec, name=name) for name in names] if names else [spec] * len(calls)
    client = client or default_client()  # (bad input refused first: not after a personal cluster was started)
    try:  # (one check: named copies differ in their names only, which the master checks)
        check_specs(specs[:1])
        ids = client.submit_many(specs, check=False) if calls else []
    except GrunError as exc:  # (refused: in the Python API's words)
        raise type(exc)(in_python(str(exc))) from None
    return follow_all(client, label, ids, function, args)


RESOURCES = ("cpus", "memory", "priority", "hosts", "env", "cwd", "params", "time", "name", "retries", "after",
             "afterok", "force")  # a job's, as for Client.submit (time: a limit; after(ok): ids, Jobs or CallFutures)


def submit_call(func: Callable, *args, python: str | None = None, client: Client | None = None,
                **kwargs) -> CallFuture:
    """Queue `func(*args, **kwargs)` as a job and return a Future for its value; the job is on the master's disk
    when this returns (`future.job.id`). `result()` returns the function's value, or raises what it raised
    remotely (same type and value, the remote traceback added as a note), or RemoteError for a job that ended
    without a result. The keywords of RESOURCES (cpus, memory, priority, hosts, env, cwd, params, time, name, retries,
    after, afterok, force) are the job's, as for `Client.submit`; `python` is the node's interpreter (ours by default;
    grun must be importable there); every other keyword, the call's: one `func` takes too (`def f(x, time=0)`) is
    refused, give it with functools.partial(f, time=0); a `**kwargs` gets no job option. Bad ones: BadArgument."""
    resources = {key: kwargs.pop(key) for key in RESOURCES if key in kwargs}
    try:  # (no signature: a builtin's, a C function's; a partial's keywords are its; positional-only ones cannot clash)
        takes = {n for n, p in inspect.signature(func).parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                 p.KEYWORD_ONLY)} - (func.keywords.keys() if isinstance(func, partial) else set())
    except (TypeError, ValueError):
        takes = set()
    if both := sorted(resources.keys() & takes):
        raise TypeError(f"{', '.join(both)}= would be the job's, and {getattr(func, '__name__', func)} takes it too: "
                        f"give the function its own with functools.partial(f, {both[0]}=...)")
    return _submit(client, func, [(args, kwargs)], python, resources)[0]


def remote(func: Callable, *args, **kwargs) -> Any:
    """`func(*args, **kwargs)` run on a node: its value (keywords as for submit_call); Ctrl-C kills the job."""
    return _results([submit_call(func, *args, **kwargs)])[0]


def map(func: Callable, iterable: Iterable, *iterables: Iterable, python: str | None = None,
        client: Client | None = None, timeout: float | None = None, **resources) -> list:
    """`[func(x) for x in iterable]` (several iterables: `func(x, y)`, as the built-in map), each call a job of its
    own, all queued at once and run in parallel with the given resources each (RESOURCES, as for submit_call; `name`
    names the jobs NAME-ID-0, NAME-ID-1..., ID the map's own: maps may share a name); results in input order. The
    first failure (in order) is raised, or Timeout `timeout` s after the call (as Executor.map's), and the calls not
    yet finished are killed."""
    if unknown := sorted(resources.keys() - set(RESOURCES)):
        raise TypeError(f"map() got unexpected keyword arguments {', '.join(unknown)} (resources: {', '.join(RESOURCES)})")
    calls, name, map_id = [(xs, {}) for xs in zip(iterable, *iterables)], resources.pop("name", None), secrets.token_hex(3)
    names = None if name is None else [f"{name}-{map_id}-{i}" for i in range(len(calls))]
    return _results(_submit(client, func, calls, python, resources, names), timeout)


def _results(futures: list[CallFuture], timeout: float | None = None) -> list:
    """Their values in order; at the first failure (or Ctrl-C), or `timeout` s from now, the calls not yet finished
    are killed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        return [f.result(deadline and max(0.0, deadline - time.monotonic())) for f in futures]
    except BaseException as exc:
        left = sum(not f.done() for f in futures)
        cancel_all(futures)
        if isinstance(exc, TimeoutError) and left and deadline and time.monotonic() >= deadline:  # (not a function's)
            raise Timeout(f"{left} of {len(futures)} calls unfinished after {timeout:g} s (killed)") from None
        raise
