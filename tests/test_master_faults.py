"""The master when a request fails, through real daemons: in its core (the waiters the failed event's records woke are
woken, not left asleep until their next poll, and the caller gets the core's one-line error), or on a full disk (it
stays up, refuses changes, answers queries, writes what it kept in memory once there is room, and then carries out
what those records asked for: an end's on_finish, its log lines)."""
from __future__ import annotations

import contextlib
import json
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

from grun.actors.master import Master
from grun.client import GrunError, current_user
from grun.journal import numbered
from grun.plugins import Plugin, Plugins


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


@contextlib.contextmanager
def _tmpfs(size: str):
    """A small tmpfs of its own (root only) in a temp dir, yielded; unmounted and removed after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    root = tempfile.mkdtemp(prefix="grun-diskfull-")
    mount = os.path.join(root, "master")
    os.makedirs(mount)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", mount], capture_output=True).returncode:
        shutil.rmtree(root)
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield root, mount
    finally:
        subprocess.run(["umount", mount], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def full_disk_cluster():
    """A cluster whose master's spool is a small tmpfs of its own (root only), unmounted and removed after."""
    with _tmpfs("4m") as (root, _):
        # min_free_disk 0: no early refusal, the journal itself meets the full disk; the log outside it, to be read
        c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000}}, root=root,
                         master_extra={"min_free_disk": 0, "log_file": os.path.join(root, "master.log")})
        try:
            c.start()
            yield c
        finally:
            c.stop()


def _fill(path: str) -> None:
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * (64 << 10))


def _submit_until_refused(submit) -> tuple[list[int], str]:
    """Submissions until one meets the full disk (the journal's last page may take a few more records)."""
    accepted = []
    while len(accepted) < 200:
        try:
            accepted.append(submit())
        except (GrunError, ValueError) as exc:
            return accepted, str(exc)
    raise AssertionError("200 submissions fitted on the full disk")


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
    accepted, refused = _submit_until_refused(lambda: client.submit_spec(_spec(hold=True)))
    assert re.fullmatch(r"master's disk is full: no room for its journal in \S+ \(No space left on "
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
    with open(master_log) as f:
        assert "has room again" in f.read()
    with open(os.path.join(c.root, "n1", "grun.log")) as f:  # the node was told to try again, not handed an error
        assert "talking to the master" not in f.read()

    # a master killed now replays the journal the full disk cut and wrote again: every line whole, none glued
    c.kill("master")
    seqs, state = [], os.path.join(c.root, "master", "master")
    for first in numbered(state, "journal.", ".log"):
        with open(os.path.join(state, f"journal.{first}.log"), "rb") as f:
            data = f.read()
        assert data.endswith(b"\n"), f"journal.{first}.log ends in a torn line"
        seqs += [json.loads(line)["seq"] for line in data.splitlines()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "journal records lost or repeated"
    logged = os.path.getsize(master_log)
    c.start_master()
    c.wait_nodes(["n1"])
    with open(master_log) as f:
        f.seek(logged)
        replay = f.read()
    assert "torn" not in replay and "damaged" not in replay, replay
    assert all(client.job(i)["state"] == "held" for i in accepted), "an acknowledged job was lost"
    never = client.job(never["id"])
    assert never["state"] == "killed" and never.get("start_time") is None, "the refused submission came back"
    assert client.job(running)["exit"] == 3
    client.kill(accepted)


@pytest.fixture
def full_disk_master():
    """A master in-process whose store is on a small tmpfs, with a plugin that hears ends, and a ballast path there."""
    with _tmpfs("2m") as (_, mount):
        ends: list[tuple[int, str]] = []
        dispatched: list[int] = []

        class Ends:
            def on_finish(self, job, record):
                ends.append((job["id"], record["state"]))

            def on_dispatch(self, job, node):
                dispatched.append(job["id"])
        master = Master(os.path.join(mount, "master"), plugins=Plugins([Plugin("test:Ends", Ends())]),
                        min_free_disk=0, allow_root=True)
        master.ends, master.dispatched, master.ballast = ends, dispatched, os.path.join(mount, "ballast")
        try:
            yield master
        finally:
            master.shutdown()


def test_a_nodes_calls_on_a_full_disk_are_retried_and_an_end_is_heard_once_there_is_room(full_disk_master):
    """A node's heartbeat whose records met a full disk got a ValueError ('done in memory'), which its daemon logged
    as a traceback, losing that reply's kills: now it is told to try again, as a finished report is. And the ended job
    of a report that met the full disk never reached the plugins' on_finish (the step's instructions were dropped,
    and the node's retry finds the end already recorded): now they run once the records are on disk."""
    master = full_disk_master
    master.register_node({"name": "n9", "uri": "PYRO:grun.node@127.0.0.1:9", "cpus": 2, "memory": 1000})
    job = master.submit_many([_spec()])[0]
    wait_for(lambda: master.job(job)["state"] == "dispatched", what="the job to be dispatched")
    _fill(master.ballast)
    accepted, refused = _submit_until_refused(lambda: master.submit_many([_spec(hold=True)])[0])
    assert refused.startswith("master's disk is full"), refused
    with pytest.raises(ConnectionRefusedError, match="^the grun master's disk is full"):
        master.heartbeat("n9", {"running": [job]})  # (its start record meets the full disk)
    assert master.job(job)["state"] == "running"
    for _ in range(2):  # the report, and the node's retry (which finds the end recorded: nothing new)
        with pytest.raises(ConnectionRefusedError, match="^the grun master's disk is full"):
            master.finished("n9", [{"id": job, "exit_code": 3}])
    time.sleep(1.5)
    assert master.ends == [], "on_finish heard of an end not on disk"
    os.unlink(master.ballast)
    wait_for(lambda: master.ends, 10, what="on_finish")
    assert master.finished("n9", [{"id": job, "exit_code": 3}]) == [job]  # the node's retry, acknowledged
    time.sleep(1.5)
    # each once, in order: the refused submission's kill (its on_submit had run), and the job's end
    assert master.ends == [((accepted[-1] if accepted else job) + 1, "killed"), (job, "failed")]


def test_an_offer_kept_on_a_full_disk_is_not_sent_once_its_job_has_ended(full_disk_master):
    """A scheduling pass made in the instant before the journal found its disk full kept its offers with its step;
    they were sent once there was room, even for a job killed meanwhile (as a submission refused in that instant is),
    so its node started it until the kill landed. Now an offer whose job is no longer dispatched there is dropped."""
    master = full_disk_master
    master.register_node({"name": "n9", "uri": "PYRO:grun.node@127.0.0.1:9", "cpus": 2, "memory": 1000})
    master._scheduler.stop(join=5)  # the pass is made below, on cue
    job = master.submit_many([_spec()])[0]
    _fill(master.ballast)
    assert _submit_until_refused(lambda: master.submit_many([_spec(hold=True)])[0])[1].startswith("master's disk")
    # the pass that found room just before the journal found none: the job is dispatched in memory and its offer
    # kept; then it is killed (as _not_written kills a refused submission), that step kept too
    for event in (("schedule",), ("kill", [job], 15, True)):
        with pytest.raises(ValueError, match="done in memory, on disk once there is room$"):
            master._do(*event)
    assert master.job(job)["state"] == "killed"
    os.unlink(master.ballast)
    wait_for(lambda: (job, "killed") in master.ends, 10, what="the kept steps to run")
    later = master.submit_many([_spec()])[0]
    master._do("schedule")
    wait_for(lambda: later in master.dispatched, 10, what="a later offer to the node")  # (after the kept one's)
    assert job not in master.dispatched, "the offer of a killed job was sent to its node"
