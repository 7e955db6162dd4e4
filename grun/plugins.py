"""Plugins: classes whose optional hooks (HOOKS) the daemons call, each within a time budget (README: Plugins). A
hook that raises or runs past its budget is logged and skipped, and while a late one runs its plugin is skipped at
once: a plugin never stalls a daemon (nor runs under the master's lock) and never loses a job."""

import inspect
import logging
import queue
import threading
from concurrent.futures import Future
from importlib import metadata
from pkgutil import resolve_name

from .config import KEYS, ConfigError

log = logging.getLogger("grun.plugins")

GROUP = "grun.plugins"
BUDGET_SECS = 2.0
IDLE_SECS = 60.0  # a hook's thread ends after this long without a call
MAX_NOTICES = 1000  # notices waiting for one plugin; more are dropped (logged): a stuck plugin costs no memory
HOOKS = ("on_submit", "on_dispatch", "on_finish", "node_resources", "on_start")
EDITABLE = ("cpus", "memory", "params", "priority", "env")  # what on_submit may change
END_FIELDS = ("state", "exit", "exit_code", "signal", "node", "start_time", "end_time", "usage", "error", "limit",
              "attempt")
_SKIPPED = object()


class Reject(Exception):
    """Raised by a plugin's on_submit: the job is refused and the submitter sees the message (exit 1)."""


class _Worker:
    """A daemon thread that runs what it is given, in order, and ends when idle (a hook that never returns must
    not hold up the daemon's exit, as a ThreadPoolExecutor's thread would; plugins gone at a reload leave none)."""

    def __init__(self, name: str):
        self.name, self.queue, self.thread, self.lock = name, queue.SimpleQueue(), None, threading.Lock()

    def submit(self, fn, *args) -> Future:
        future = Future()
        with self.lock:  # (so a thread that finds the queue empty and ends cannot miss this call)
            self.queue.put((future, fn, args))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
        return future

    def _run(self) -> None:
        while True:
            try:
                future, fn, args = self.queue.get(timeout=IDLE_SECS)
            except queue.Empty:
                with self.lock:
                    if self.queue.empty():
                        self.thread = None
                        return
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


class Plugin:
    """One loaded plugin, and the threads its hooks run on (made when first used)."""

    def __init__(self, name: str, obj):
        self.name, self.obj, self.budget = name, obj, float(getattr(obj, "budget", BUDGET_SECS))
        self._calls, self._notices = _Worker(f"grun-plugin-{name}"), _Worker(f"grun-plugin-{name}-notices")
        self._busy = self._told = None  # the future of a call that ran past its budget; the one the log told of
        self._dropping = False

    def call(self, hook: str, *args):
        """The result, or _SKIPPED if it failed, was late, or a late one still runs; on_submit's Reject: ValueError."""
        if self._busy is not None and not self._busy.done():
            if self._told is not self._busy:  # (once, not once per job)
                self._told = self._busy
                log.warning("plugin %s: %s skipped, as its hooks are until its late call ends", self.name, hook)
            return _SKIPPED
        future = self._calls.submit(getattr(self.obj, hook), *args)
        try:
            return future.result(timeout=self.budget)
        except TimeoutError:  # (concurrent.futures' since 3.11)
            self._busy = future
            log.warning("plugin %s: %s ran past its budget of %g s; skipped", self.name, hook, self.budget)
        except Exception as exc:
            if isinstance(exc, Reject) and hook == "on_submit":  # the submission is refused
                raise ValueError(f"{exc} (plugin {self.name})") from None
            log.warning("plugin %s: %s failed (%s: %s); skipped", self.name, hook, type(exc).__name__, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))
        return _SKIPPED

    def notify(self, hook: str, *args) -> None:
        full = self._notices.queue.qsize() >= MAX_NOTICES  # (those waiting, not the one running)
        if not full:
            self._notices.submit(self._notice, hook, args)
        elif not self._dropping:  # (once until one gets through)
            log.warning("plugin %s: %s dropped, and its next notices while %d wait", self.name, hook, MAX_NOTICES)
        self._dropping = full

    def _notice(self, hook: str, args: tuple) -> None:
        try:
            getattr(self.obj, hook)(*args)
        except Exception as exc:
            log.warning("plugin %s: %s failed (%s: %s)", self.name, hook, type(exc).__name__, exc)


class Plugins:
    """The plugins a daemon runs (`replace`: at a reload); each method is free when no plugin has its hook."""

    def __init__(self, plugins=()):
        self.replace(plugins)

    def replace(self, plugins) -> None:
        self.all = list(plugins)
        self.names = [p.name for p in self.all]
        self.hooks = {hook: [p for p in self.all if callable(getattr(p.obj, hook, None))] for hook in HOOKS}

    def submit(self, requests: list[dict]) -> None:
        """on_submit over the validated requests, in place; a Reject refuses the whole submission (ValueError).
        The master may still refuse it after (a full disk): on_submit is no sign that a job was queued."""
        from .core.jobs import validate_spec
        from .core.rules import apply
        for req, plugin in ((r, p) for r in requests for p in self.hooks["on_submit"]):
            job = _copy(req, id=None)
            if (changes := plugin.call("on_submit", job)) is _SKIPPED:
                continue
            changes = {**job, **(changes if isinstance(changes, dict) else {})}
            new = {k: changes[k] for k in EDITABLE if k in changes and changes[k] != req.get(k)}
            try:
                checked = validate_spec({"cmd": req["cmd"], "cwd": req["cwd"], **{k: req[k] for k in EDITABLE}, **new})
            except ValueError as exc:
                log.warning("plugin %s: on_submit's changes are not valid (%s); skipped", plugin.name, exc)
                continue
            if new:  # set as a rule's `set:` is: its origin, and (cpus, memory) a limit as if asked
                apply([(f"plugin {plugin.name}", lambda _: True, [("set", {k: checked[k] for k in new})])], req, {})

    def start(self, job: dict, shell: str) -> None:
        """on_start, on the node's copy of the job before it is written: its env, and its argv when wrapped."""
        argv = [shell, "-c", job["cmd"][0]] if job.get("shell") else list(job["cmd"])
        for plugin in self.hooks["on_start"]:
            view = _copy(job, cmd=list(argv), env=dict(job.get("env") or {}))
            if plugin.call("on_start", view, view["env"]) is _SKIPPED:
                continue
            job["env"] = {str(k): str(v) for k, v in view["env"].items()}
            if view["cmd"] != argv and view["cmd"] and all(isinstance(a, str) for a in view["cmd"]):
                argv = job["cmd"] = list(view["cmd"])
                job["shell"] = False

    def notify(self, hook: str, *args) -> None:
        for plugin in self.hooks[hook]:
            plugin.notify(hook, *(_copy(a) if isinstance(a, dict) else a for a in args))

    def finished(self, jobs: list[dict]) -> None:
        """on_finish for each job that ended: the job, and its end (state, exit_code, node, usage, ...)."""
        for job in jobs if self.hooks["on_finish"] else ():
            self.notify("on_finish", job, {k: job[k] for k in END_FIELDS if k in job})

    def node_resources(self) -> dict:
        """The plugins' node_resources() merged (the first to name a resource wins), each checked as in the config."""
        found = {"resources": {}, "labels": {}}
        for plugin in self.hooks["node_resources"]:
            if (offer := plugin.call("node_resources")) is _SKIPPED:
                continue
            try:
                parsed = {key: KEYS[key].parse((offer or {}).get(key) or {}) for key in found}
            except (AttributeError, ValueError) as exc:
                log.warning("plugin %s: node_resources() gave a bad answer (%s); skipped", plugin.name, exc)
                continue
            for key, values in parsed.items():
                found[key] = {**values, **found[key]}
        return found


def _copy(job: dict, **more) -> dict:
    return {**job, **{k: dict(job[k]) for k in ("env", "params") if isinstance(job.get(k), dict)},
            **({"cmd": list(job["cmd"])} if "cmd" in job else {}), **more}


def load(cfg, instantiate: bool = True) -> Plugins:
    """The config's plugins (and the installed and built-in ones), loaded; a ConfigError names the first that cannot
    be. Without `instantiate`, only whether each imports (`grun -d` checks before it starts the daemon)."""
    found = [(ep.value, f"entry point {ep.name!r} of {ep.dist.name if ep.dist else 'an installed package'}")
             for ep in metadata.entry_points(group=GROUP)]
    found += [(spec, f"plugins: in {cfg.where.get('plugins', 'the config')}") for spec in cfg.plugins]
    found.append(("grun.gpu:GpuPlugin", "built in"))
    loaded = {}  # spec -> Plugin: one named twice loads once
    for spec, where in found:
        try:
            cls = resolve_name(spec)
            if instantiate and spec not in loaded:  # a class whose constructor takes an argument gets the Config
                takes = inspect.isclass(cls) and len(inspect.signature(cls).parameters) > 0
                loaded[spec] = Plugin(spec, cls(cfg) if takes else cls())
        except Exception as exc:
            raise ConfigError(f"plugin {spec!r} ({where}) cannot be loaded: {type(exc).__name__}: {exc}") from None
    return Plugins(loaded.values())
