"""The one client: how the CLI (and later the shell and Python code) talks to the master and to jobs.

It finds the master at an explicit address, retries calls that failed because the master was
unreachable (with backoff, for a bounded time), turns remote errors into grun's own exceptions, and
runs a job end to end: submit, wait for it to start, stream its output from its node's side channel,
and return its exit code.
"""

from __future__ import annotations

import os
import secrets
import time

import Pyro5.errors

from . import registry, stream
from .core import jobs as J


class GrunError(Exception):
    """A failure to report to the user in one line."""


class MasterUnreachable(GrunError):
    pass


class JobNotFound(GrunError):
    pass


class NotSupported(GrunError):
    """The master does not offer this operation (an older master, or a feature not built yet)."""


class Client:
    def __init__(self, host: str, port: int, connect_wait: float = 10.0):
        self.host, self.port = host, port
        self.address = registry.format_hostport(host, port)
        self.connect_wait = connect_wait
        self._master = None

    # ---- the master ----------------------------------------------------------------------------

    def _proxy(self):
        if self._master is None:
            self._master = registry.proxy(registry.master_uri(self.host, self.port), timeout=90.0)
        self._master._pyroClaimOwnership()
        return self._master

    def call(self, method: str, *args, wait: float | None = None):
        """Call the master, riding through a master that is briefly away."""
        deadline = time.monotonic() + (self.connect_wait if wait is None else wait)
        delay = 0.05
        while True:
            try:
                return getattr(self._proxy(), method)(*args)
            except AttributeError as exc:
                if method in str(exc):
                    raise NotSupported(f"{method} is not available on this master") from None
                raise GrunError(f"master at {self.address}: {_message(exc)}") from None
            except LookupError as exc:
                raise JobNotFound(_message(exc)) from None
            except (ValueError, TypeError) as exc:
                raise GrunError(_message(exc)) from None
            except Exception as exc:
                if not registry.is_unreachable(exc):
                    raise GrunError(f"master at {self.address}: {_message(exc)}") from None
                if self._master is not None:
                    registry.reset(self._master)
                self._master = None
                if time.monotonic() + delay > deadline:
                    raise MasterUnreachable(f"cannot reach the grun master at {self.address}: {_message(exc)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def reachable(self) -> bool:
        try:
            self.call("ping", wait=0)
            return True
        except MasterUnreachable:
            return False

    def submit(self, spec: dict) -> int:
        return self.submit_spec(spec)

    def submit_spec(self, spec: dict) -> int:
        """Queue one job from a full spec (see grun.core.jobs.SPEC_KEYS); returns its id once on disk."""
        spec = dict(spec)
        spec.setdefault("token", secrets.token_hex(12))  # a retried submit cannot queue the job twice
        return int(self.call("submit", spec))

    def job(self, job_id: int) -> dict:
        return self.call("job", int(job_id))

    def jobs(self) -> list[dict]:
        return self.call("jobs")

    def nodes(self) -> list[dict]:
        return self.call("nodes")

    def history(self, limit: int = 50, user: str | None = None) -> list[dict]:
        return self.call("history", limit, user)

    def kill(self, job_ids: list[int], sig: int = 15) -> dict:
        return {int(k): v for k, v in self.call("kill", [int(i) for i in job_ids], int(sig)).items()}

    def hold(self, job_ids: list[int]) -> dict[int, bool]:
        """Hold queued jobs, suspend running ones; returns {id: found}."""
        return {int(k): v for k, v in self.call("hold", [int(i) for i in job_ids]).items()}

    def resume(self, job_ids: list[int]) -> dict[int, bool]:
        """Release held jobs, continue suspended ones; returns {id: found}."""
        return {int(k): v for k, v in self.call("resume", [int(i) for i in job_ids]).items()}

    def edit(self, job_ids: list[int], changes: dict) -> dict[int, bool]:
        """Change queued jobs (priority, cpus, memory, hosts, params); returns {id: found}."""
        return {int(k): v for k, v in self.call("edit", [int(i) for i in job_ids], dict(changes)).items()}

    def why(self, job_id: int) -> str:
        """One paragraph on why a queued job is not running."""
        return str(self.call("why", int(job_id)))

    def wait(self, job_ids: list[int], poll: float = 30.0) -> dict[int, dict]:
        """Block until every job has finished; returns their final records."""
        ids = [int(i) for i in job_ids]
        done: dict[int, dict] = {}
        while len(done) < len(ids):
            left = [i for i in ids if i not in done]
            got = self.call("wait", left, poll, wait=max(self.connect_wait, 3600.0))
            done.update({int(k): v for k, v in got.items()})
        return done

    def wait_started(self, job_id: int) -> dict:
        while True:
            job = self.call("wait_started", job_id, 30.0, wait=max(self.connect_wait, 3600.0))
            if job["state"] not in (J.QUEUED, J.HELD, J.DISPATCHED):
                return job

    # ---- a job's output ------------------------------------------------------------------------

    def run(self, spec: dict, *, stdin_fd: int | None = None, stdout_fd: int = 1, stderr_fd: int = 2,
            on_submit=None, on_start=None) -> int:
        """Submit a job, stream its output as it is produced, and return its exit code."""
        spec = dict(spec, stdin=stdin_fd is not None)
        job_id = self.submit_spec(spec)
        if on_submit:
            on_submit(job_id)
        return self.follow(job_id, stdin_fd=stdin_fd, stdout_fd=stdout_fd, stderr_fd=stderr_fd, on_start=on_start)

    def follow(self, job_id: int, *, stdin_fd=None, stdout_fd=1, stderr_fd=2, on_start=None) -> int:
        job = self.wait_started(job_id)
        if on_start:
            on_start(job)
        out_off = err_off = 0
        for attempt in range(20):
            uri = job.get("node_uri")
            if not uri:
                break
            try:
                with registry.proxy(_job_uri(uri, job_id)) as sup:
                    ticket = sup.attach(out_off, err_off, stdin_fd is not None)
                    status = stream.attach(ticket["host"], ticket["port"], ticket["token"], stdout_fd=stdout_fd,
                                           stderr_fd=stderr_fd, stdin_fd=stdin_fd,
                                           out_offset=out_off, err_offset=err_off)
                    try:
                        sup.release()
                    except Exception:
                        pass
                return J.exit_code_of(status)
            except stream.StreamBroken as broken:
                out_off, err_off = broken.out_offset, broken.err_offset
                stdin_fd = None  # what was sent is gone with the connection; don't send the rest twice
            except LookupError:
                break  # the node no longer holds the output
            except Exception as exc:
                if not registry.is_unreachable(exc):
                    raise GrunError(f"job {job_id}: {_message(exc)}") from None
            time.sleep(min(0.2 * (attempt + 1), 2.0))
            job = self.call("job", job_id, wait=max(self.connect_wait, 3600.0))  # ride through a master restart
        final = self.wait([job_id])[job_id]
        return int(final.get("exit", 1))


def _job_uri(node_uri: str, job_id: int) -> str:
    """The job's actor lives on its node's daemon, next to the node actor."""
    location = node_uri.split("@", 1)[1]
    return f"PYRO:{registry.job_name(job_id)}@{location}"


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[-1] if text else exc.__class__.__name__
    if isinstance(exc, Pyro5.errors.CommunicationError) and not text:
        return "connection failed"
    return text.strip("'\"") if isinstance(exc, KeyError) else text


def default_env(extra: list[str] | None = None, environ=os.environ) -> dict:
    """The environment a job gets: PATH and the usual session variables, plus those asked for by -E."""
    keep = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
            "VIRTUAL_ENV", "PYTHONPATH"}
    names = set()
    for item in extra or []:
        names.update(n.strip() for n in item.split(",") if n.strip())
    if "*" in names:
        return dict(environ)
    return {k: v for k, v in environ.items() if k in keep or k in names or k.startswith("LC_")}
