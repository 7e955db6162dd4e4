"""The master when a request fails, through real daemons: in its core (the waiters the failed event's records woke are
woken, not left asleep until their next poll, and the caller gets the core's one-line error), or on a full disk (it
stays up, refuses changes, answers queries, and writes what it kept in memory once there is room)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
from cluster import LocalCluster
from util import wait_for

from grun.client import GrunError, current_user


def _spec(**extra) -> dict:
    return {"cmd": ["true"], "cwd": "/", "user": current_user(), "uid": os.getuid(), "gid": os.getgid(), **extra}


def test_a_waiter_is_woken_when_an_event_fails_after_touching_its_job(cluster):
    """A submission --after task A.3 (not begun: the core makes it a job, a "task" record of array A) whose name is
    taken fails in the core after that record: the waiters of A were taken from the watchers and never woken, so a
    `grun wait A` slept through A's end until its poll's timeout (30 s)."""
    client = cluster.client()
    array, taken = client.submit_many([_spec(array="1-5", hold=True), _spec(name="taken-name", hold=True)])
    got = []
    waiter = threading.Thread(target=lambda: got.append(client.call("wait", [array], 25.0)))
    waiter.start()
    time.sleep(0.5)  # (the waiter is in the master's watchers)
    with pytest.raises(GrunError, match="^a job named 'taken-name' already exists"):
        client.submit_many([_spec(name="taken-name", after=[f"{array}.3"])])
    client.kill([array, taken])
    began = time.monotonic()
    waiter.join(30)
    assert got and got[0][str(array)]["state"] == "killed"
    assert time.monotonic() - began < 5, "the waiter slept through the end of the job it waits for"


@pytest.fixture
def full_disk_cluster():
    """A cluster whose master's spool is a small tmpfs of its own (root only), unmounted and removed after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    root = tempfile.mkdtemp(prefix="grun-diskfull-")
    spool = os.path.join(root, "master")
    os.makedirs(spool)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", spool], capture_output=True).returncode:
        shutil.rmtree(root)
        pytest.skip("cannot mount a tmpfs here")
    # min_free_disk 0: no early refusal, the journal itself meets the full disk; the log outside it, to be read
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000}}, root=root,
                     master_extra={"min_free_disk": 0, "log_file": os.path.join(root, "master.log")})
    try:
        c.start()
        yield c
    finally:
        c.stop()
        subprocess.run(["umount", spool], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _fill(path: str) -> None:
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * (64 << 10))


def test_a_full_disk_refuses_changes_keeps_answering_and_heals(full_disk_cluster):
    """The journal's write failing for want of room stopped the master (a Slurm user expects slurmctld to stay up):
    now it refuses submissions and edits with one line, answers queries, keeps what it could not write in memory,
    and writes it once there is room; a submission it could not write is refused, and never runs."""
    c = full_disk_cluster
    client, master_log = c.client(), os.path.join(c.root, "master.log")
    gate = os.path.join(c.root, "gate")
    running = client.submit_spec(_spec(cmd=["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 3"]))
    wait_for(lambda: client.job(running)["state"] == "running", what="the job to run")
    ballast = os.path.join(c.root, "master", "ballast")
    _fill(ballast)
    accepted, refused = [], None
    while refused is None and len(accepted) < 200:  # (the journal's last page may take a few more records)
        try:
            accepted.append(client.submit_spec(_spec(hold=True)))
        except GrunError as exc:
            refused = str(exc)
    assert refused and re.fullmatch(r"master's disk is full: no room for its journal in \S+ \(No space left on "
                                    r"device\): not accepting new jobs", refused), refused
    open(gate, "w").close()  # its end cannot be written yet: the node reports it again until it is
    r = c.grun("--nowait", "true")
    assert (r.returncode, r.stdout) == (1, b"") and re.fullmatch(
        rb"grun: master's disk is full: no room for its journal in \S+ \(No space left on device\): no new jobs or "
        rb"changes until there is room\n", r.stderr), r.stderr
    with pytest.raises(GrunError, match="^master's disk is full: "):
        client.edit([accepted[0]], {"priority": 5})
    for query in (["jobs"], ["status"], ["history"], ["why", str(running)]):
        r = c.grun("-q", *query)
        assert r.returncode == 0, (query, r.stderr)
    assert any(w.startswith("master's disk is full") for w in client.status()["warnings"])
    time.sleep(2)  # (the node's report of the end meets the full disk meanwhile)
    assert c.procs["master"].poll() is None, "the master exited"
    with open(master_log) as f:
        assert "no room for its journal" in f.read()

    os.unlink(ballast)
    wait_for(lambda: not client.status()["warnings"], 10, what="the journal to write what it kept")
    assert client.wait([running], timeout=20)[running]["exit"] == 3
    assert c.grun("sh", "-c", "exit 5").returncode == 5
    never = client.job(accepted[-1] + 1 if accepted else running + 1)
    assert never["state"] == "killed" and never.get("start_time") is None, "the refused submission ran"
    client.kill(accepted)
    with open(master_log) as f:
        assert "has room again" in f.read()
