"""The one client of the master and of jobs (the command line's, the shell's, Python code's): it finds the master,
rides through one briefly away (bounded retries), maps what a call fails with (grun.wire) to grun's exceptions
(`_failure`), builds job specs (`job_spec`, the only builder) and follows a job to its end (grun.follow: output
streamed from its node, then its exit code). A Client may be shared between threads: each its own connection."""

import _thread
import os
import sys
import time
from collections.abc import Sequence

from . import auth, mounts, wire
from .auth import current_user  # (read from here by the verbs and shims too)
from .registry import job_name, master_uri

# Not imported here: Pyro5 (calls go through grun.wire), psutil, yaml, secrets, typing, threading, contextlib, and
# grun.stream until a job's output is followed: each `grun` call pays for every import (tests/test_cli_fast.py).
TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:
    from .job import Job

JOBS_PAGE = 5000  # live jobs a call returns at most (the master's Queries.jobs)
SENT_SUBMIT_WAIT = 600.0  # how long a submission that may have been accepted is retried (same token)


class GrunError(Exception):
    """A failure to report to the user in one line."""


class MasterUnreachable(GrunError):
    """The master did not answer within the client's connect_wait."""


class JobNotFound(GrunError, LookupError):
    """No job has this id (or it is too old to be remembered)."""


class BadArgument(GrunError, ValueError):
    """An argument refused before anything is sent (cpus=-1, memory="lots", a spec that is not one): a ValueError too."""


class Timeout(GrunError, TimeoutError):
    """A wait with a timeout ran out before the job finished."""


class NotSupported(GrunError):
    """The master has no such operation (Pyro5 found no method of that name)."""


class JobsRefused(GrunError):
    """Some jobs are another user's: `refused` {id: why}, a line each; the rest were acted on (`found`: {id: found})."""

    def __init__(self, refused: dict, found: dict):
        super().__init__("\n".join(refused.values()))
        self.refused, self.found = refused, found


def _failure(exc: BaseException, where: str, method: str = "") -> GrunError:
    """The one map from what a remote call can fail with (see grun.wire) to grun's exceptions."""
    lines = str(exc).strip().splitlines()
    text = (lines[-1] if lines else "") or type(exc).__name__
    if wire.is_unreachable(exc):
        return MasterUnreachable(f"cannot reach the grun {where}: {text}")
    if isinstance(exc, OSError) and exc.errno in wire.LOCAL_ERRNOS:
        return GrunError(f"{where}: {exc.strerror} in this process")  # (ours, which no retry heals)
    if isinstance(exc, wire.NoSuchMethod):
        return NotSupported(f"{method} is not available on the {where}")
    if isinstance(exc, LookupError):
        return JobNotFound(text.strip("'\""))  # a KeyError's message is the repr of its key
    if isinstance(exc, UnicodeEncodeError):  # a word or file name whose bytes are not UTF-8
        word = exc.object.encode(errors="surrogateescape").decode(errors="backslashreplace")  # (not b'...': a repr)
        return GrunError(f"'{word}': not UTF-8, and grun's records are text")
    return GrunError(text if isinstance(exc, (ValueError, TypeError)) else f"{where}: {text}")  # (a refusal says why)


def _by_id(client, method: str, job_ids: list, *args) -> dict:
    """The master's `method` over job ids (`12.7`: task 7 of array 12), or one id, its answer by id (or JobsRefused)."""
    for job_id, text in (reply := client.call(method, _ids(job_ids), *args)).pop("warnings", ()):  # (an edit's, as a
        client.warn(f"job {job_id}: {text}")                             # submission's: a rule's warn:, what it set)
    found = {k if "." in k else int(k): v for k, v in reply.items()}
    if refused := {k: why for k, why in found.items() if isinstance(why, str)}:
        raise JobsRefused(refused, {k: v is True for k, v in found.items()})
    return found


def refusals(act, *args) -> tuple[dict, dict]:
    """A Client method acting on jobs by id (kill, hold, edit...): its {id: found}, and {id: why} of JobsRefused."""
    try:
        return act(*args), {}
    except JobsRefused as exc:
        return exc.found, exc.refused


def _job_ref(ref) -> int | str:
    """A job id from 12 or "12", or a task's "12.7" as it is; GrunError for anything else ("name", "12x")."""
    try:
        return ref if isinstance(ref, str) and "." in ref else int(ref)
    except ValueError:
        raise GrunError(f"not a job id: {ref!r}") from None


def _ids(job_ids, names: bool = False) -> list:
    """Job ids (tasks `12.7` as they are) from a list of them, of Jobs or of CallFutures (grun.calls), or from one;
    `names`: other strings too, as job names (after/afterok: the master resolves them)."""
    listed = job_ids if hasattr(job_ids, "__iter__") and not isinstance(job_ids, str) else [job_ids]
    ids = [getattr(getattr(i, "job", i), "id", i) for i in listed]
    if not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids):
        raise GrunError(f"expected a job id or a list of them, got {job_ids!r}")
    return [i if names and isinstance(i, str) and not i.replace(".", "").isdigit() else _job_ref(i) for i in ids]


def _ask(method: str, doc: str, by_id: bool = False):
    """A Client method that is the master's `method`; `by_id`: it takes a list of job ids and answers by id."""
    def ask(self, *args):
        return _by_id(self, method, *args) if by_id else self.call(method, *args)
    ask.__name__, ask.__doc__ = method, doc
    return ask


class Client:
    """A connection to one grun master: `Client()` finds it as `grun` does ($GRUN_CONF, /etc/grun.conf, else the
    personal cluster here, started if needed), or from `config` (a path or a loaded config); `Client("host:5184")` or
    `Client("host", 5184)` names it; a call rides through a silent master `connect_wait` s (then MasterUnreachable)."""

    def __init__(self, host: str | None = None, port: int | None = None, connect_wait: float = 10.0, *, config=None):
        from .config import ConfigError, find_config_path, load_config
        from .values import format_hostport, parse_hostport
        self._local = _thread._local()  # threading.local, without importing threading
        cfg = None
        try:
            if host is None:
                cfg = config if hasattr(config, "master_host") else load_config(find_config_path(config))
                host, port = cfg.master_host, cfg.master_port
            elif port is None:
                host, port = parse_hostport(host)
        except (ConfigError, ValueError) as exc:
            raise GrunError(f"bad master address {host!r}: {exc}" if host else str(exc)) from None
        self.host, self.port, self.address = host, int(port), format_hostport(host, int(port))
        self.connect_wait, self._answered = connect_wait, False
        self.nfs_sync = cfg is None or cfg.nfs_sync  # refresh NFS's cache of a job's outputs once it has ended
        self.long_wait = max(connect_wait, 3600.0)  # how long a wait rides through a master that is away
        self.call_timeout = 90.0  # a call that waits on the master (wait, a group commit) answers well within it
        if cfg is not None and cfg.personal and not self.reachable():  # else no daemon code is imported
            from .daemon import DaemonError, ensure_personal_cluster
            try:
                ensure_personal_cluster(cfg, self, lambda m: print(m, file=sys.stderr, flush=True))
            except DaemonError as exc:
                raise GrunError(str(exc)) from None

    def __repr__(self) -> str:
        return f"Client({self.address!r})"

    def reset(self) -> None:
        """Drop this thread's connection (after an interrupted call); the next call reconnects."""
        if (proxy := self._local.__dict__.pop("proxy", None)) is not None:
            proxy._pyroRelease()

    def _proxy(self) -> wire.WireProxy:
        """This thread's proxy for the master (one connection, used by one thread at a time)."""
        if "proxy" not in self._local.__dict__:
            self._local.proxy = wire.WireProxy(master_uri(self.host, self.port), timeout=self.call_timeout)
        return self._local.proxy

    def call(self, method: str, *args, wait: float | None = None, sent_wait: float | None = None):
        """Call the master, riding through one away from its failure: up to `wait` s once reached, else connect_wait.
        `sent_wait`: how long a call safe to repeat (a submission, its token) is retried once it may have arrived."""
        failed, deadline, delay = None, 0.0, 0.05
        while True:
            try:
                result = getattr(self._proxy(), method)(*args)
                self._answered = True
                return result
            except Exception as exc:
                if unreachable := wire.is_unreachable(exc):
                    self.reset()
                    self._answered |= getattr(exc, "reached", False)  # it answered our hello: a master, away now
                    broken = isinstance(exc, wire.CallBroken)  # (it may have the call)
                    failed = failed or time.monotonic()  # (not the call's start: a long poll waits 30 s)
                    deadline = max(deadline, failed + (sent_wait if broken and sent_wait else 0), failed + min(
                        self.connect_wait if wait is None else wait, float("inf") if self._answered else self.connect_wait))
                if not unreachable or time.monotonic() + delay > deadline:
                    raise _failure(exc, f"master at {self.address}", method) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def reachable(self) -> bool:
        try:
            return bool(self.call("ping", wait=0))
        except MasterUnreachable:
            return False

    def submit(self, cmd: str | Sequence[str] | dict, **options) -> "Job | int":
        """Queue a command, its Job once on the master's disk: `cmd` a shell command line (a string, run by /bin/sh) or
        an argv list; `options` as job_spec takes them: cpus, memory (MB, "500M", "4G"), priority, params ({"gpu": 1}),
        name, cwd (ours by default), env (added to the session's), hosts (a glob or comma list), time (seconds; a
        string as -t reads it: "1h", "1:30:00", "30" minutes), after/afterok (ids, names, Jobs), retries... A dict: a spec, its id. A bad one: BadArgument, nothing sent."""
        if isinstance(cmd, dict):
            return self.submit_many([cmd])[0]
        if not isinstance(cmd, (str, list, tuple)):
            raise BadArgument(f"submit takes a command line (a string) or an argv list, not {cmd!r}")
        from .job import Job
        return Job(self, self.submit_many([job_spec(cmd, **options)])[0])

    def submit_spec(self, spec: dict) -> int:
        """Queue one job from a spec job_spec built (the command line's: not checked here, which would import
        grun.core.jobs into each `grun` call; the master checks it); its id once on disk."""
        return self.submit_many([spec], check=False)[0]

    def submit_many(self, specs: list[dict], check: bool = True) -> list[int]:
        """Queue many jobs from full specs (see grun.core.jobs.SPEC_KEYS) in one call (one disk commit): their ids. A spec
        the master would refuse as malformed raises BadArgument, before anything is sent (unless check=False)."""
        if isinstance(specs, (dict, str, bytes)) or not hasattr(specs, "__iter__"):
            raise BadArgument(f"submit_many takes a list of job specs, not {type(specs).__name__}")
        specs = list(specs)  # (a generator of specs too)
        if check:
            check_specs(specs)
        specs = [{"token": os.urandom(12).hex(), **spec} for spec in specs]  # a retry: harmless (secrets: hmac)
        sent = time.time()
        reply = self.call("submit_jobs", specs, sent_wait=SENT_SUBMIT_WAIT)
        self.times = {"connected": getattr(self._local.__dict__.get("proxy"), "_pyroConnected", sent),
                      "answered": time.time()}  # for GRUN_TIMES (grun/cli.py)
        for job_id, text in reply.get("warnings", ()):  # (a policy rule's warn:, ...)
            self.warn(f"job {job_id}: {text}" if len(specs) > 1 else text)
        return [int(i) for i in reply["ids"]]

    def warn(self, text: str) -> None:
        """A warning about a submission or an edit, for its maker: on stderr (replace it to do otherwise)."""
        print(f"grun: warning: {text}", file=sys.stderr, flush=True)

    def get(self, job_id: int) -> "Job":
        """A handle for an existing job; raises JobNotFound if there is none."""
        from .job import Job
        self.job(job_id)
        return Job(self, int(job_id))

    # the master's answers as they are (its docstrings say what each takes and returns; hold, resume: {id: found})
    job = _ask("job", "The job's record: id, state, cmd, cpus, memory, node, exit, usage, ...")
    nodes = _ask("nodes", "One record per node: name, up, cpus, memory, free_cpus, free_memory, running.")
    status = _ask("status", "{nodes, warnings (the master's problems, a line each), master_spool}; (True): plugins.")
    lookup = _ask("lookup", "The id of the live job with this name (grun -j NAME), or None.")
    why = _ask("why", "One paragraph on why a queued job is not running.")
    hold = _ask("hold", "Hold queued jobs, suspend running ones (not with pending_only=True, as Slurm and SGE).",
                by_id=True)
    resume = _ask("resume", "Release held jobs, continue suspended ones.", by_id=True)
    edit = _ask("edit", "Change queued jobs ({'priority': 5, 'cpus': 2, 'p.gpu': 1, ...}, as grun -e): {id: found}; what "
                "the rules or plugins did otherwise than asked, and their warnings, through `warn`.", by_id=True)
    renew = _ask("renew", "Renew the leases of jobs submitted with lease=SECONDS: {id: renewed}.", by_id=True)

    def jobs(self) -> list[dict]:
        """A list of the records of the queued and running jobs, by id (the master's: JOBS_PAGE a call)."""
        out = page = self.call("jobs")  # (a master before pages: all of them, more than JOBS_PAGE or fewer)
        while len(page) == JOBS_PAGE:
            out = out + (page := self.call("jobs", out[-1]["id"], JOBS_PAGE))
        return out

    def history(self, limit=50, user: str | None = None, grep: str | None = None, array=0, since=0.0) -> list[dict]:
        """The latest finished jobs, newest first: only `user`'s, those whose command or name match `grep`, `array`'s
        tasks, those that ended at `since` or later (all history's, up to `limit`); a master before `array` takes 3 args."""
        return self.call("history", limit, user, grep, *((array, since) if since else (array,) if array else ()))

    def kill(self, job_ids: list, sig: int = 15, force: bool = False) -> dict:
        """Signal queued or running jobs (or one); {id: whether it was live}. `force` marks running jobs killed at once,
        even if their node cannot be reached."""
        return _by_id(self, "kill", job_ids, int(sig), bool(force))

    def job_id(self, ref, deadline: float = float("inf")) -> int:
        """A job id from 12, "12" or a task's "12.7", once that task has begun (JobNotFound: no such task, or it ended
        long ago; Timeout past `deadline`, a time.monotonic())."""
        if isinstance(ref := _job_ref(ref), int):
            return ref
        while "task" not in (job := self.job(ref)):  # (not begun: the master answers with its array)
            if time.monotonic() > deadline:
                raise Timeout(f"task {ref} has not begun yet")
            time.sleep(1.0)
        return int(job["id"])

    def wait(self, job_ids: list, timeout: float | None = None) -> dict[int, dict]:
        """The final records of the jobs (ids, or tasks `12.7`), once all have finished (Timeout after `timeout` s);
        by the jobs' own ids."""
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        ids, done = [self.job_id(i, deadline=deadline) for i in _ids(job_ids)], {}
        while len(done) < len(ids):
            if (left := deadline - time.monotonic()) <= 0:
                raise Timeout(f"job {ids[0]} has not finished after {timeout:g} s")
            got = self.call("wait", [i for i in ids if i not in done], min(left, 30.0), wait=self.long_wait)
            done.update({int(k): v for k, v in got.items()})
        return done

    def exit_code(self, job_id: int, on_limit=None, timeout: float | None = None) -> int:
        """Wait for the job's end (as `wait`) and return its exit code; `on_limit(text)` hears of a limit it died of."""
        (final,) = self.wait([job_id], timeout).values()
        _tell_limit(on_limit, final, final["id"])
        if self.nfs_sync:
            mounts.after(final)
        return int(final.get("exit", 1))

    def wait_started(self, job_id: int, on_wait=None) -> dict:
        """The job's record once it runs (or has ended); `on_wait(line)` hears why not yet, after 3 s, as it changes."""
        from .core.jobs import UNSTARTED  # waiting (dependencies) too
        patience, told = 3.0 if on_wait else 30.0, None
        while (job := self.call("wait_started", job_id, patience, wait=self.long_wait))["state"] in UNSTARTED:
            if on_wait and (line := self.call("why", job_id, True)) != told:
                on_wait(told := line)
            patience = 5.0 if on_wait else 30.0  # (asked every 5 s, said once: as srun's "queued and waiting")
        return job

    def supervisor(self, job_id: int, job: dict) -> wire.WireProxy | None:
        """A proxy to the job's supervisor on its node's daemon, or None while its node is not known."""
        uri = job.get("node_uri") or next((n.get("uri") for n in self.nodes() if n["name"] == job.get("node")),
                                          None) if job.get("node") else None
        return wire.WireProxy(f"PYRO:{job_name(job_id)}@{uri.split('@', 1)[1]}") if uri else None

    def follow(self, job_id: int, **how) -> int:
        """Stream the job's output once it runs into fds or callables, until it ends; its exit code (grun.follow)."""
        from .follow import follow
        return follow(self, job_id, **how)


def check_specs(specs: list[dict]) -> None:
    """BadArgument for a spec the master would refuse as malformed; each dict once (grun.map gives one for all its calls)."""
    from .core.jobs import validate_spec
    try:
        for spec in {id(spec): spec for spec in specs}.values():  # (34 us a check)
            validate_spec(spec)
    except (TypeError, ValueError) as exc:
        raise BadArgument(str(exc)) from None


def job_spec(cmd: str | Sequence[str], *, cpus: float | None = None, memory: int | str | None = None,
             priority: int | None = None, params=None, name: str | None = None, cwd: str | None = None,
             env: dict | None = None, hosts: str | None = None, stdin: bool = False, pass_env: list | None = None,
             requeue: bool = True, force: bool = False, time: float | str | None = None, **extra) -> dict:
    """The one builder of a job spec (grun.core.jobs.SPEC_KEYS): `cmd` a shell command line (a string) or an argv, run
    in `cwd` (ours) as us, the session's variables, `pass_env`'s (-E), `env`; `params` a dict or pairs; `time` seconds
    or a duration ("90s", "1h30m"); after, afterok, afternotok: ids, names, Jobs or CallFutures; `extra` other keys.
    What it cannot take raises BadArgument."""
    from .values import parse_cpus, parse_job_priority, parse_memory, parse_time_limit
    shell = isinstance(cmd, str)
    words = [cmd] if shell else [str(w) for w in cmd]
    if not words or shell and not cmd.strip():
        raise BadArgument("empty command")
    if cwd is None:
        try:
            cwd = os.getcwd()
        except OSError:  # ours was removed
            cwd = "/"
    if priority is None and os.environ.get("GRUN_PRIORITY", "").strip():
        try:
            priority = parse_job_priority(os.environ["GRUN_PRIORITY"])
        except ValueError as exc:
            raise GrunError(f"bad $GRUN_PRIORITY: {exc}") from None
    spec: dict = {"cmd": words, "shell": shell, "cwd": os.path.abspath(cwd),
                  "env": {**default_env(pass_env), **{str(k): str(v) for k, v in (env or {}).items()}},
                  "user": current_user(), "uid": os.getuid(), "gid": os.getgid(), "umask": auth.umask(), **extra}
    try:  # (a local cwd has no cwd_fs, and no placement by it)
        spec.update((kind, _ids(extra[kind], names=True)) for kind in ("after", "afterok", "afternotok")
                    if extra.get(kind) is not None)
        chosen = {"cwd_fs": mounts.identity(spec["cwd"]), "cpus": cpus if cpus is None else parse_cpus(cpus),
                  "memory": memory if memory is None else parse_memory(memory),
                  "priority": priority if priority is None else parse_job_priority(priority), "name": name, "host": hosts,
                  "params": dict(params) if params else None, "requeue": None if requeue else False,
                  "force": force or None, "stdin": stdin or None,  # (time: a number, seconds; a string as -t reads it)
                  "time": time if time is None or isinstance(time, (int, float)) else parse_time_limit(time)}
    except (GrunError, TypeError, ValueError) as exc:  # (after=[None], params=3, ...)
        raise BadArgument(str(exc)) from None
    spec.update((key, value) for key, value in chosen.items() if value is not None)
    return spec


def _tell_limit(on_limit, result: dict, job_id: int) -> None:
    """Tell `on_limit` the limit the job died of, why it ended unstarted (a dependency failed...), or that it was lost."""
    if on_limit and isinstance(result.get("limit"), str):  # (an array's record holds its %N throttle there: a number)
        from .limits import describe  # only then: the node's module, with its imports (subprocess)
        on_limit(describe(result, job_id))
    elif on_limit and (result.get("state") == "lost" or result.get("state") in ("cancelled", "killed", "failed")
                       and not result.get("start_time")) and "ranges" not in result:  # (an array's tasks say theirs)
        on_limit(f"job {job_id} {result['state']}" + (f": {result['error']}" if result.get("error") else "") + (
            f"; if its node comes back with its end, grun -q wait {job_id} gives its exit code"
            if result["state"] == "lost" and "late_end" not in result else ""))


def known_user(word: str | None) -> str | None:
    """The user this host knows by that name or uid (as squeue -u takes either; None: none asked); else a GrunError."""
    if not word:
        return None
    import pwd
    try:
        return pwd.getpwuid(int(word)).pw_name if word.isdigit() else pwd.getpwnam(word).pw_name
    except KeyError:
        raise GrunError(f"no such user {word!r}") from None


# What a job gets of our environment (NAME*: all that begin so): the session, grun's own and XDG_STATE_HOME (a grun in
# the job finds its master and secret), what `module load`, conda, OpenMP, BLAS, R, Perl and Java set. Not all: each
# queued job's env is journaled and kept in the master's memory.
DEFAULT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM",
               "GRUN_CONF", "GRUN_MASTER", "GRUN_SPOOL", "XDG_STATE_HOME", "VIRTUAL_ENV", "PYTHONPATH", "CONDA_*",
               "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "PKG_CONFIG_PATH", "MANPATH", "MODULEPATH",
               "LOADEDMODULES", "_LMFILES_", "MODULESHOME", "OMP_*", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "PERL5LIB", "R_LIBS", "R_LIBS_USER", "JAVA_HOME", "CLASSPATH")


def default_env(extra: list[str] | None = None) -> dict:
    """The environment a job gets: DEFAULT_ENV's variables, plus those asked for by -E: names (ours passed), '*'
    (all of ours) or NAME=VALUE (set so, as Slurm's --export=NAME=VALUE)."""
    words = [w for item in extra or [] for w in item.split(",") if w.strip()]
    names = {w.strip() for w in words if "=" not in w} | set(DEFAULT_ENV)
    given = {name.strip(): value for name, _, value in (w.partition("=") for w in words if "=" in w)}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))  # ("*": all of ours)
    return {**{k: v for k, v in os.environ.items() if k in names or k.startswith(prefixes)}, **given}
