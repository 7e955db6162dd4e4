"""Test hygiene (tests/conftest.py): a pytest stopped by SIGTERM or SIGHUP still stops its daemons and removes its
users; what one killed outright left, the next session's sweep takes away, and nothing of a live one."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys

import conftest
import pytest
from cluster import LocalCluster, account
from util import wait_for

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates real users (CI runs as root)")
HELD = """
import os, time, pytest
from cluster import account

@pytest.fixture
def user():
    name = f"grunt{os.getpid() % 100000}"
    account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
    yield name
    account("userdel", name, check=False)

def test_held(fresh_cluster, user):
    with open(os.environ["HELD"], "w") as f:
        f.write(" ".join([user, fresh_cluster.root, *(str(p.pid) for p in fresh_cluster.procs.values())]))
    time.sleep(120)
"""


def _alive(pid: int) -> bool:  # (a zombie, ended but not reaped yet by its parent, is not)
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _users() -> set[str]:
    return {u.pw_name for u in pwd.getpwall()}


@ROOT_ONLY
@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, []), (signal.SIGHUP, ["-n", "1"])])
def test_a_signalled_pytest_runs_its_teardowns(tmp_path, sig, workers):
    (tmp_path / "test_held.py").write_text(HELD)
    tests = os.path.dirname(__file__)
    env = dict(os.environ, HELD=str(tmp_path / "held"), PYTHONPATH=os.pathsep.join([tests, os.path.dirname(tests)]))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", *workers,
                             "--rootdir", str(tmp_path), str(tmp_path / "test_held.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    user, root, *pids = None, None
    try:
        user, root, *pids = wait_for(lambda: (tmp_path / "held").exists() and (tmp_path / "held").read_text().split(),
                                     timeout=60, what="the held test")
        assert user in _users() and all(_alive(int(pid)) for pid in pids)
        proc.send_signal(sig)  # (to pytest alone: with workers, its controller)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 2 and f"KeyboardInterrupt: signal {sig.value}" in out, out
        assert user not in _users() and not any(_alive(int(pid)) for pid in pids) and not os.path.exists(root)
    finally:  # (without the handler: what the killed pytest left)
        proc.kill()
        proc.wait()
        for pid in pids:
            if _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if user:
            account("userdel", user, check=False)
            shutil.rmtree(root, ignore_errors=True)


def test_a_cluster_stops_a_daemon_restarted_by_grun_d_R():
    c = LocalCluster(nodes={})
    with c:
        assert c.grun("-d", "-R", "-C", c.configs["master"]).returncode == 0
        restarted = int(open(os.path.join(c.root, "master", "grun.pid")).read())
        assert restarted != c.procs["master"].pid and _alive(restarted)
    wait_for(lambda: not _alive(restarted), timeout=10, what="the restarted master to end")


@ROOT_ONLY
def test_the_sweep_takes_what_a_dead_pytest_left_and_nothing_of_a_live_one(monkeypatch):
    live = {int(p) % 100000 for p in os.listdir("/proc") if p.isdigit()}
    dead = next(tag for tag in range(99999, 0, -1) if tag not in live)  # (no process has such a pid)
    names = [f"grunt{dead}", f"grunt{os.getpid() % 100000}"]
    orphan, ours, job = LocalCluster(nodes={}), LocalCluster(nodes={}), None
    try:
        for name in names:
            account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
        job = subprocess.Popen(["sleep", "60"], user=names[0])  # (a process of it: userdel would refuse)
        with monkeypatch.context() as m:
            m.setenv(conftest.OWNER, str(dead))
            orphan.start_master()
        ours.start_master()
        conftest.sweep()
        assert orphan.procs["master"].wait(10) == -signal.SIGKILL and ours.procs["master"].poll() is None
        assert not os.path.exists(orphan.root) and os.path.exists(ours.root)
        assert job.wait(10) == -signal.SIGKILL
        assert names[0] not in _users() and names[1] in _users()
    finally:
        orphan.stop()
        ours.stop()
        if job:
            job.kill()
            job.wait()
        for name in names:
            account("userdel", name, check=False)


def test_a_cluster_s_stop_kills_the_jobs_still_running(tmp_path):
    """Jobs outlive their daemons by design, so a cluster's stop kills them: its reader of the pid file missed the
    reaper's "PID.START" name for two days of sessions and left every test's unfinished job running (a CPU burner
    from test_scheduling ran on for good)."""
    c = LocalCluster(nodes={"n1": {"cpus": 1, "memory": 500}})
    with c:
        pid_file = tmp_path / "pid"
        assert c.grun("--nowait", "sh", "-c", f"echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file} && exec sleep 600"
                      ).returncode == 0
        pid = wait_for(lambda: pid_file.exists() and int(pid_file.read_text()), timeout=20, what="the job to start")
        assert _alive(pid)
    wait_for(lambda: not _alive(pid), timeout=10, what="the job to be killed with its cluster")
