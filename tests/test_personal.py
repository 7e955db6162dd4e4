"""The personal cluster (issue 2, point 1): with no config file and no master, `grun CMD` starts a
master and a node on 127.0.0.1 in the background, says so once, and runs the job there; later calls
reuse it; `grun -d -k` stops it. It needs the default port, 5184, on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from util import wait_for

PORT = 5184


def _port_busy() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", PORT)) == 0


@pytest.fixture
def personal():
    """An environment with no config: HOME and XDG_STATE_HOME in a temp dir, no GRUN_* variables."""
    if _port_busy():
        pytest.skip(f"something already listens on 127.0.0.1:{PORT}, the personal cluster's port")
    yield from _personal({})


@pytest.fixture
def personal_elsewhere():
    """The same on a free port ($GRUN_MASTER): for other modules' tests, which may run while this module's do."""
    from cluster import free_port
    yield from _personal({"GRUN_MASTER": f"127.0.0.1:{free_port()}"})


def _personal(extra: dict):
    if os.path.exists("/etc/grun.conf"):
        pytest.skip("/etc/grun.conf exists, so grun would not run in personal mode")
    root = tempfile.mkdtemp(prefix="grun-personal-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    env.update(HOME=os.path.join(root, "home"), XDG_STATE_HOME=os.path.join(root, "state"), **extra)
    os.makedirs(env["HOME"])
    state = os.path.join(root, "state", "grun")
    seen: set[int] = set()

    def grun(*args, **kwargs):
        kwargs.setdefault("timeout", 60)
        r = subprocess.run([sys.executable, "-m", "grun.cli", *args], env=env, capture_output=True,
                           stdin=subprocess.DEVNULL, **kwargs)
        pid = _pid(state)
        if pid:
            seen.add(pid)
        return r

    try:
        yield grun, state, seen
    finally:
        pid = _pid(state)
        if pid:
            seen.add(pid)
        for pid in seen:  # only the daemon this test started, by its pid
            _stop(pid)
        shutil.rmtree(root, ignore_errors=True)


def _pid(state: str) -> int | None:
    try:
        with open(os.path.join(state, "grun.pid")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop(pid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not _alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def test_personal_cluster_starts_once_is_reused_and_stops(personal):
    grun, state, _seen = personal
    hostname = socket.gethostname().encode()
    first = grun("hostname")
    pid = _pid(state)
    assert pid and _alive(pid), first.stderr
    assert (first.returncode, first.stdout) == (0, hostname + b"\n"), first.stderr
    lines = first.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grun:") and "personal cluster" in lines[0], lines
    assert "grun -d -k" in lines[0]

    second = grun("sh", "-c", "hostname; echo $GRUN_NODE")
    assert (second.returncode, second.stdout, second.stderr) == (0, hostname + b"\n" + hostname + b"\n", b"")
    assert _pid(state) == pid

    listening = [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert ("127.0.0.1", PORT) in [(a.ip, a.port) for a in listening]

    status = grun("-q", "status")
    rows = [row for row in status.stdout.decode().splitlines()[1:] if not row.startswith("master spool:")]
    assert [row.split()[:2] for row in rows] == [[socket.gethostname(), "up"]]

    stop = grun("-d", "-k")
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not _alive(pid), 20, what="the personal cluster to stop")
    assert not _port_busy()
    again = grun("-d", "-k")
    assert again.returncode == 0 and b"not running" in again.stderr


def test_two_first_gruns_at_once_start_one_cluster(personal):
    grun, _state, _seen = personal
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: grun("true"), range(2)))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    messages = [r.stderr for r in results if r.stderr]
    assert len(messages) == 1, messages
    assert grun("-d", "-k").returncode == 0


def test_a_personal_cluster_starts_under_umask_002(personal_elsewhere):
    """Under umask 002 (a private group's users) the spool's missing parents are made 0755, not 0775 (refused: 'writable
    by others'), and a parent group-writable by our private group passes, as Debian's sshd StrictModes."""
    grun, state, _ = personal_elsewhere
    top = os.path.dirname(os.path.dirname(state))
    os.chmod(top, 0o775)  # (its group is our private one: the tests' user's has no other members)
    r = grun("hostname", umask=0o002)
    assert r.returncode == 0, r.stderr.decode()
    assert [os.stat(d).st_mode & 0o777 for d in (os.path.dirname(state), state)] == [0o755, 0o755]
