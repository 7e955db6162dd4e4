"""Plugins: classes whose optional hooks (HOOKS) the daemons call, each within a time budget (README: Plugins). A
hook that raises or runs past its budget is logged and skipped (an enforcing plugin's on_submit refuses instead), and
while a late one runs its plugin is skipped at once, never waited for: a plugin never stalls a daemon (nor runs under
the master's lock) and never loses a job."""

import contextlib
import inspect
import logging
import os
import sys
from importlib import metadata
from pkgutil import resolve_name

from .background import Worker
from .config import KEYS, ConfigError

log = logging.getLogger("grun.plugins")

GROUP = "grun.plugins"
BUDGET_SECS = 2.0
MAX_NOTICES = 1000  # notices waiting for one plugin; more are dropped (logged): a stuck plugin costs no memory
HOOKS = ("on_submit", "on_dispatch", "on_finish", "node_resources", "on_start")
# A reload does not import a plugin's module again (importlib.reload would run the new code over the old module's
# objects, and not the modules it imports: half new, half old, and a failure midway changes the running plugins).
NOT_AGAIN = "the daemon imported it: a reload does not import plugin code again, grun -d -R does"
_IMPORTED: dict[str, int] = {}  # a plugin module's file -> its mtime (ns) when this process first loaded a plugin of it
EDITABLE = ("cpus", "memory", "params", "priority", "env")  # what on_submit may change
END_FIELDS = ("state", "exit", "exit_code", "signal", "node", "start_time", "end_time", "usage", "error", "limit",
              "attempt")


class Reject(Exception):
    """Raised by a plugin's on_submit: the job is refused and the submitter sees the message (exit 1)."""


class Skipped(str):
    """What Plugin.call gives for a call that failed, was late, or was not made while a late one runs: why."""


class Plugin:
    """One loaded plugin, and the threads its hooks run on (made when first used)."""

    def __init__(self, name: str, obj):
        self.name, self.obj, self.budget = name, obj, float(getattr(obj, "budget", BUDGET_SECS))
        self.enforce = bool(getattr(obj, "enforce", False))  # a late or failed on_submit refuses the submission
        self._calls, self._notices = Worker(f"grun-plugin-{name}", True), Worker(f"grun-plugin-{name}-notices")
        self._late = self._told = None  # (the future, the hook) of a call that ran past its budget; the one told of
        self._dropping = False

    def call(self, hook: str, *args, skipping: str = "skipped"):
        """The result, or a Skipped if it failed, was late, or a late one still runs, logged with `skipping` (what
        that means); on_submit's Reject: ValueError."""
        if self._late is not None and not self._late[0].done():
            why = Skipped(f"not called while its late {self._late[1]} runs")
            if self._told is not self._late:  # (once, not once per job)
                self._told = self._late
                log.warning("plugin %s: %s %s; %s", self.name, hook, why, skipping)
            return why
        future = self._calls.submit(getattr(self.obj, hook), *args)
        try:
            return future.result(timeout=self.budget)
        except TimeoutError:  # (concurrent.futures' since 3.11)
            self._late, why, failed = (future, hook), Skipped(f"ran past its budget of {self.budget:g} s"), False
        except Exception as exc:
            if isinstance(exc, Reject) and hook == "on_submit":  # the submission is refused
                raise ValueError(f"{exc} (plugin {self.name})") from None
            why, failed = Skipped(f"failed ({type(exc).__name__}: {exc})"), log.isEnabledFor(logging.DEBUG)
        log.warning("plugin %s: %s %s; %s", self.name, hook, why, skipping, exc_info=failed)
        return why

    def notify(self, hook: str, *args) -> None:
        full = self._notices.queue.qsize() >= MAX_NOTICES  # (those waiting, not the one running)
        if not full:  # (a failure is logged here: nobody reads a notice's future)
            future = self._notices.submit(getattr(self.obj, hook), *args)
            future.add_done_callback(lambda done: done.exception() and log.warning(
                "plugin %s: %s failed (%s: %s)", self.name, hook, type(done.exception()).__name__, done.exception()))
        elif not self._dropping:  # (once until one gets through)
            log.warning("plugin %s: %s dropped, and its next notices while %d wait", self.name, hook, MAX_NOTICES)
        self._dropping = full


class Plugins:
    """The plugins a daemon runs (`replace`: at a reload); each method is free when no plugin has its hook."""

    def __init__(self, plugins=()):
        self.offers = {}  # plugin -> its last good node_resources(), which stands while it is skipped (over reloads)
        self.replace(plugins)

    def replace(self, plugins) -> None:
        self.all = list(plugins)
        self.names = [p.name for p in self.all]
        self.hooks = {hook: [p for p in self.all if callable(getattr(p.obj, hook, None))] for hook in HOOKS}

    def submit(self, requests: list[dict]) -> None:
        """on_submit over the validated requests, in place; a Reject, or an enforcing plugin's skipped call or changes
        that are not valid, refuses the whole submission (ValueError). The master may still refuse it after (a full
        disk): on_submit is no sign that a job was queued."""
        from .core.edits import given
        from .core.jobs import validate_spec
        from .core.rules import apply
        for req, plugin in ((r, p) for r in requests for p in self.hooks["on_submit"]):
            job = _copy({"id": None, "edit": None, **req})  # (an edit's: its job's id, and what it changes)
            skipping = "the submission refused (it enforces)" if plugin.enforce else "skipped"
            if isinstance(changes := plugin.call("on_submit", job, skipping=skipping), Skipped):
                if plugin.enforce:  # it fails closed: a policy that could not be asked is not waived
                    raise ValueError(f"plugin {plugin.name}: on_submit {changes}; {skipping}")
                continue
            changes = {**job, **(changes if isinstance(changes, dict) else {})}
            new = {k: changes[k] for k in EDITABLE if k in changes and changes[k] != req.get(k)}
            try:
                checked = validate_spec({"cmd": req["cmd"], "cwd": req["cwd"], **{k: req[k] for k in EDITABLE}, **new})
            except ValueError as exc:  # (an enforcing plugin's, as its failure: a policy not applied is not waived)
                log.warning(why := f"plugin {plugin.name}: on_submit's changes are not valid ({exc}); {skipping}")
                if plugin.enforce:
                    raise ValueError(why) from None
                continue
            if new:  # set as a rule's `set:` is: its origin, (cpus, memory) a limit as if asked; theirs in asked
                mine = {k: req[k] for k in ("cpus", "memory", "priority") if k in new and k not in req.get("origin", ())
                        and given(req, k)}
                apply([(f"plugin {plugin.name}", lambda _: True, [("set", {k: checked[k] for k in new})])], req, {})
                if asked := {**mine, **req.get("asked", {})}:  # (an edit starts from it: grun.core.edits.given_spec)
                    req["asked"] = asked

    def start(self, job: dict, shell: str) -> None:
        """on_start, on the node's copy of the job before it is written: its env, and its argv when wrapped."""
        argv = [shell, "-c", job["cmd"][0]] if job.get("shell") else list(job["cmd"])
        for plugin in self.hooks["on_start"]:
            view = _copy(job, cmd=list(argv), env=dict(job.get("env") or {}))
            if isinstance(plugin.call("on_start", view, view["env"]), Skipped):
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
        """The plugins' node_resources() merged (the first to name a resource wins), each checked as in the config;
        while a plugin's call fails or is late, its last good answer stands (a slow one at a reload lost them)."""
        found = {"resources": {}, "labels": {}}
        for plugin in self.hooks["node_resources"]:
            skipping = "skipped, keeping its last resources and labels" if plugin.name in self.offers else "skipped"
            try:
                if not isinstance(offer := plugin.call("node_resources", skipping=skipping), Skipped):
                    self.offers[plugin.name] = {key: KEYS[key].parse((offer or {}).get(key) or {}) for key in found}
            except (AttributeError, ValueError) as exc:
                log.warning("plugin %s: node_resources() gave a bad answer (%s); %s", plugin.name, exc, skipping)
            for key, values in self.offers.get(plugin.name, {}).items():
                found[key] = {**values, **found[key]}
        return found


def _copy(job: dict, **more) -> dict:
    return {**job, **{k: dict(job[k]) for k in ("env", "params", "edit") if isinstance(job.get(k), dict)},
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
            hint = f" ({path} changed since {NOT_AGAIN})" if (path := _changed(spec)) else ""
            raise ConfigError(f"plugin {spec!r} ({where}) cannot be loaded: {type(exc).__name__}: {exc}{hint}") from None
    for path in dict.fromkeys(filter(None, (_changed(spec) for spec, _ in found))):
        log.warning("plugin module %s changed since %s; its old code runs until then", path, NOT_AGAIN)
    return Plugins(loaded.values())


def _changed(spec: str) -> str:
    """The file of the plugin's module if it changed since this process first loaded a plugin of it, else ''."""
    path = getattr(sys.modules.get(spec.partition(":")[0]), "__file__", None) or ""
    with contextlib.suppress(OSError):
        mtime = os.stat(path).st_mtime_ns
        return path if _IMPORTED.setdefault(path, mtime) != mtime else ""
    return ""
