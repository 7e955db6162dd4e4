"""A node daemon stopped cleanly (`grun -d -k`, SIGTERM) tells the master it leaves, as slurmd does: the master
marks it down at once (no job is offered to it, where it used to try every 2 s until node_timeout), keeps its
running jobs as they are (they run on under the node's reaper), and it takes jobs again once it registers."""
from __future__ import annotations

import os
import signal
import time

import pytest
from cluster import LocalCluster
from test_master_state import _running, _state, _submit
from util import nowait, wait_for, wait_state

from grun import registry
from grun.core import jobs as J
from grun.core.explain import explain, progress
from grun.core.master_state import START_RETRY_SECS

FAST = {"heartbeat": 0.5}


# ---- the core ------------------------------------------------------------------------------------

def test_a_node_that_leaves_is_down_at_once_keeps_its_jobs_and_is_back_when_it_registers():
    m = _state("a", "b", node_timeout=60.0)
    running = _running(m, "a")
    offered = _submit(m, 2.5, host="a")
    assert [i[0] for i in m.handle("schedule", 2.5).do] == ["offer"]  # dispatched, its start not confirmed yet
    step = m.handle("leave", "a", "i1", 3.0)
    assert step.reply is True and step.records == [] and not step.durable
    node = m.table.nodes["a"]
    assert (node.up, node.lost, node.public(3.0)["state"]) == (False, False, "stopped")
    assert m.table.jobs[running]["state"] == J.RUNNING, "its running job is not lost: it runs on under its reaper"
    assert m.handle("leave", "a", "i1", 3.5).reply is False, "down already"
    assert m.handle("leave", "b", "an older run", 3.5).reply is False, "a newer daemon registered since"
    assert m.table.nodes["b"].up
    waiting = _submit(m, 4.0, host="a")
    assert m.handle("schedule", 4.0 + START_RETRY_SECS + 1).do == [], "neither offered nor offered again"
    assert m.table.jobs[waiting]["state"] == J.QUEUED
    why = explain(m.table.jobs[waiting], m, 10.0)
    assert "1 node down: a." in why and "comes back" in why and "could ever run" not in why, why
    assert m.handle("sweep", 50.0).records == [], "not lost before node_timeout"
    back = m.handle("register", {"name": "a", "uri": "PYRO:grun.node@a:2", "cpus": 4, "memory": 4000,
                                 "incarnation": "i2", "seq": 0, "running": [running]}, 55.0)
    assert [j["id"] for j in back.reply["start"]] == [offered], "the start it never got comes with its registration"
    assert m.table.nodes["a"].public(55.0)["state"] == "up" and m.table.jobs[running]["state"] == J.RUNNING
    assert ("offer", "a", [waiting]) in [(i[0], i[1], [j["id"] for j in i[2]]) for i in m.handle("schedule", 56.0).do]


def test_a_node_that_left_and_never_comes_back_loses_its_jobs_at_node_timeout():
    m = _state("a", node_timeout=60.0)
    running = _running(m, "a")
    m.handle("leave", "a", "i1", 3.0)
    step = m.handle("sweep", 61.0)  # (last heard from at 0.0, when it registered)
    assert [(r["op"], r["id"]) for r in step.records] == [("requeue", running)]
    assert m.table.nodes["a"].public(61.0)["state"] == "down", "stopped, then silent past node_timeout: down"


def test_the_progress_line_does_not_name_the_job_twice():
    m = _state("a")
    job_id = _submit(m)
    m.handle("schedule", 2.0)
    assert progress(m.table.jobs[job_id], m, 3.0) == "is dispatched on a."  # grun prints "grun: job 1 " before it


# ---- real daemons --------------------------------------------------------------------------------

@pytest.fixture
def two_nodes():
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, **FAST}, "n3": {"cpus": 2, "memory": 2000, **FAST}})
    try:
        yield c.start()
    finally:
        c.stop()


def _up(c: LocalCluster, name: str) -> bool:
    return next(n["up"] for n in c.client().nodes() if n["name"] == name)


def _master_log(c: LocalCluster) -> str:
    with open(os.path.join(c.root, "master", "grun.log")) as f:
        return f.read()


def _node_log(c: LocalCluster, name: str) -> str:
    with open(os.path.join(c.root, name, "grun.log")) as f:
        return f.read()


def _stop(c: LocalCluster, name: str) -> None:
    """`grun -C NODE.conf -d -k`: SIGTERM to its daemon."""
    r = c.grun("-C", c.configs[name], "-d", "-k")
    assert r.returncode == 0 and c.procs[name].wait(15) == 0, r.stderr
    wait_for(lambda: not _up(c, name), 3, what=f"the master to mark {name} down")  # (node_timeout: 60 s)


def test_a_stopped_node_is_offered_no_job_and_runs_it_once_it_is_back(two_nodes):
    c = two_nodes
    _stop(c, "n3")
    status = c.grun("-q", "status").stdout.decode()
    assert any(line.split()[:2] == ["n3", "stopped"] for line in status.splitlines()), status
    waiting = c.popen("-v", "-H", "n3", "sh", "-c", "echo $GRUN_NODE")
    job_id = wait_for(lambda: next((j["id"] for j in c.client().jobs() if j.get("host") == "n3"), None), 10,
                      what="the job to be queued")
    time.sleep(START_RETRY_SECS + 2)  # a master that took n3 for up would have offered it, and again
    assert c.client().job(job_id)["state"] == "queued"
    why = c.grun("why", str(job_id)).stdout.decode()
    assert "1 node down: n3." in why and "comes back" in why, why
    assert "start failed" not in _master_log(c) and "node n3 stopped" in _master_log(c)
    assert "ignored a ping" not in _node_log(c, "n3"), "its own shutdown woke the notify socket: no sender"
    c.start_node("n3")
    out, err = waiting.communicate(timeout=30)
    assert (waiting.returncode, out) == (0, b"n3\n"), err
    assert f"job {job_id} running on n3".encode() in err and b"Job " not in err, err


def test_a_node_stopped_with_a_job_running_keeps_it_and_reports_its_end_when_back(two_nodes, tmp_path):
    c = two_nodes
    runs = tmp_path / "runs"
    job_id = nowait(c, "-H", "n3", "sh", "-c", f"echo ran >> {runs}; sleep 2; exit 3")
    wait_state(c, job_id, "running")
    _stop(c, "n3")
    wait_for(lambda: runs.exists(), 5, what="the job to run")
    time.sleep(3)  # it ends meanwhile, under its reaper, with no node daemon to report it
    job = c.client().job(job_id)
    assert (job["state"], job["node"], job.get("requeue_reason")) == ("running", "n3", None), job
    c.start_node("n3")
    (final,) = c.client().wait([job_id], 20).values()
    assert (final["state"], final["exit"], final["attempt"], final.get("requeue_reason")) == ("failed", 3, 1, None)
    assert runs.read_text() == "ran\n", "it ran once"
    assert "start failed" not in _master_log(c)


def test_a_node_says_once_that_its_master_is_unreachable_and_when_it_is_back(tmp_path):
    """QA: a node whose master could not be reached logged nothing (slurmd: "Unable to register"); a warning at
    most once a minute, and a line when it registers again. And a heartbeat longer than node_timeout allows is
    named at the master (its node is judged by three of its beats, not flapping: tests/test_master_state.py)."""
    c = LocalCluster(nodes={"n1": {"cpus": 1, "memory": 500, **FAST}, "slow": {"cpus": 1, "memory": 500, "heartbeat": 4}},
                     master_extra={"node_timeout": 10})
    try:
        c.start()
        wait_for(lambda: "node slow: heartbeat 4 s, so down after 12 s unheard, not node_timeout" in _master_log(c), 5,
                 what="the master to name the node whose heartbeat outlasts node_timeout")
        assert "node n1: heartbeat" not in _master_log(c)
        node = registry.proxy(next(n["uri"] for n in c.client().nodes() if n["name"] == "n1"))
        assert node.first_word() == ""  # (the master's answer, what `grun -d` exits by: "" known, None not yet)
        c.kill("master", signal.SIGKILL)
        time.sleep(4)  # a retry a second
        assert _node_log(c, "n1").count("cannot reach the master") == 1, _node_log(c, "n1")
        assert node.first_word() is None
        c.start_master()
        c.wait_nodes(["n1"])
        wait_for(lambda: f"registered with the master at 127.0.0.1:{c.port} after failures" in _node_log(c, "n1"),
                 5, what="the node to say it reached its master again")
    finally:
        c.stop()
