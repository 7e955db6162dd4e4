"""Fixtures for the integration tests: real clusters on 127.0.0.1 (cluster.LocalCluster).

`cluster` is shared by the tests of one module, which must leave it as they found it (no daemons
killed, every job they start finished); `fresh_cluster` is for tests that kill or restart daemons.

A pytest stopped by SIGTERM or SIGHUP still runs its teardowns (the signal becomes a KeyboardInterrupt, as
Ctrl-C); one killed outright leaves what it started, which the next session sweeps away (`sweep`).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import grp
import os
import pwd
import re
import shutil
import signal
import tempfile

import pytest
from cluster import TEST_USER, LocalCluster, account

from grun import auth

OWNER = "GRUNTEST_PID"  # every process a test starts inherits it: a leftover names the pytest it came from
TAGGED = re.compile(r"(gra|grb|grg|grunt)(\d+)")  # users and groups of tests: a prefix, their pytest's pid % 100000
SWEPT = ("grun.daemon", "grun.spawner", "sshd", "munged")  # what is swept: daemons, reapers, helpers (argv[:3])
GRUN_TMP = os.path.join(tempfile.gettempdir(), "grun-")  # the tests' own temp dirs (mkdtemp(prefix="grun-..."))


def _interrupt(signum, frame):
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # once: another signal must not cut the teardowns
        signal.signal(sig, lambda *_: None)  # short (a handler: SIG_IGN would pass on to the processes started later)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    os.environ[OWNER] = str(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller, or a pytest without workers: once a session.
        config.made_run_dir = not os.path.exists(auth.CRED_DIR)  # (if so, removed at the end: pytest_unconfigure)
        sweep()  # (a worker whose controller dies unwinds anyway: execnet SIGINTs it 5 s later, ends it 10 s after)


def pytest_unconfigure(config):
    if getattr(config, "made_run_dir", False):
        _sweep_credentials()
        with contextlib.suppress(OSError):  # (not empty: another pytest's node daemon has its socket there)
            os.rmdir(auth.CRED_DIR)


def _sweep_credentials() -> None:
    """Remove the credential sockets and their locks no node daemon holds (left by daemons killed outright)."""
    stale = glob.glob(os.path.join(auth.CRED_DIR, "cred-*"))
    with open("/proc/net/unix") as f:  # (read after: a socket's file is made when it is bound)
        bound = f.read().split()
    for path in stale if os.geteuid() == 0 else ():
        with contextlib.suppress(OSError):
            if not path.endswith(".lock") and path not in bound:
                os.unlink(path)
            elif path.endswith(".lock"):
                with open(path) as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (held: a live daemon's; OSError)
                    os.unlink(path)


def sweep() -> None:
    """Kill the daemons, reapers, sshd and munged that a dead pytest started (by the pid it left in their environment),
    remove the credential sockets no daemon holds, then the users and groups tagged with a pid that no live process
    has (killing the users' processes first)."""
    live = _pids()
    for pid in live:
        with contextlib.suppress(OSError, ValueError):  # ended meanwhile, or not ours to read
            env = dict(e.split(b"=", 1) for e in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in e)
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
            owner = env.get(OWNER.encode())
            if owner and int(owner) not in live and any(w in a for a in argv[:3] for w in SWEPT):
                os.kill(pid, signal.SIGKILL)
                root = os.path.dirname(argv[3]) if len(argv) > 3 else ""  # a daemon's config in a test's temp dir
                if root.startswith(GRUN_TMP):  # (a LocalCluster's root): that dir too
                    shutil.rmtree(root, ignore_errors=True)
    _sweep_credentials()
    for tool, table in (("userdel", pwd.getpwall), ("groupdel", grp.getgrall)):
        for name, _, uid, *rest in table():  # (whether a pid lives: asked again for each, a pytest may have begun since)
            ours = rest[1] == TEST_USER if tool == "userdel" else name.startswith("grg") and not rest[0]  # (no member)
            if ours and (m := TAGGED.fullmatch(name)) and int(m[2]) not in {p % 100000 for p in _pids()}:
                for pid in live if tool == "userdel" else ():
                    with contextlib.suppress(OSError):
                        if os.stat(f"/proc/{pid}").st_uid == uid:
                            os.kill(pid, signal.SIGKILL)
                account(tool, name, check=False)


def _pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _started() -> LocalCluster:
    c = LocalCluster()
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def cluster():
    c = _started()
    yield c
    c.stop()


@pytest.fixture
def fresh_cluster():
    c = _started()
    yield c
    c.stop()
