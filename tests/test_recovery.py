"""Daemons dying under running and queued jobs (DESIGN invariants 1-3, issue 2's "master restart with
a queued and a running job"): kill -9 of the master, of a node daemon, and of the submitting client.
Each test gets its own cluster, since it kills daemons."""
from __future__ import annotations

import json
import re
import signal
import time

import pytest
from util import (
    group_alive,
    job,
    job_id_from_verbose,
    job_pid,
    nowait,
    read_line,
    wait_for,
    wait_state,
)

from grun.registry import CALL_TIMEOUT

# A job's wait for a go-file, touched while its daemon is down or once the new one is up: a `sleep 1.5` ended it
# before a restarted node had adopted it (start_node returned at once: the master still listed the killed one).
_AWAIT = "while [ ! -e {} ]; do sleep 0.05; done"


def _log(cluster, name: str) -> str:
    with open(f"{cluster.root}/{name}/grun.log") as f:
        return f.read()


def _history_ids(cluster) -> list[int]:
    return [j["id"] for j in json.loads(cluster.grun("-q", "history", "--json", "-c", "1000").stdout)]


def _start_verbose(cluster, *args) -> tuple:
    """A blocking `grun -v` client; returns it with its job id once the job runs."""
    proc = cluster.popen("-v", *args)
    assert read_line(proc.stderr, 20).endswith(b" queued\n")
    return proc, job_id_from_verbose(read_line(proc.stderr, 20))


def _reap(*procs) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


@pytest.mark.parametrize("finish_while_down", [False, True], ids=["finishes-after-restart", "finishes-while-down"])
def test_master_restart_with_a_running_and_a_queued_job(fresh_cluster, tmp_path, finish_while_down):
    c = fresh_cluster
    ran, queued_ran, go = tmp_path / "ran", tmp_path / "queued_ran", tmp_path / "go"
    running, rid = _start_verbose(c, "-H", "small", "sh", "-c",
                                  f"echo before; {_AWAIT.format(go)}; echo after; echo R >> {ran}; exit 5")
    queued = c.popen("-v", "-H", "small", "sh", "-c", f"echo Q >> {queued_ran}; echo queued-ran")
    try:
        assert read_line(running.stdout, 20) == b"before\n"
        qid = job_id_from_verbose(read_line(queued.stderr, 20))
        assert job(c, qid)["state"] == "queued"

        c.kill("master", signal.SIGKILL)
        if finish_while_down:
            go.touch()
            wait_for(ran.exists, 20, what="the running job to end while the master is down")
        c.start_master()
        go.touch()

        out, err = running.communicate(timeout=60)
        assert (running.returncode, out) == (5, b"after\n"), err
        out, err = queued.communicate(timeout=60)
        assert (queued.returncode, out) == (0, b"queued-ran\n"), err
        assert re.search(rb"job %d (running|done) on small\n$" % qid, err), err
    finally:
        _reap(running, queued)
    assert ran.read_text() == "R\n" and queued_ran.read_text() == "Q\n", "a job ran twice or not at all"
    assert c.grun("-q", "wait", str(rid)).returncode == 5
    r_job, q_job = job(c, rid), job(c, qid)
    assert (r_job["state"], r_job["exit"], r_job["attempt"]) == ("failed", 5, 1)
    assert (q_job["state"], q_job["exit"], q_job["attempt"]) == ("done", 0, 1)
    assert q_job["dispatch_time"] >= r_job["end_time"]
    ids = _history_ids(c)
    assert ids.count(rid) == 1 and ids.count(qid) == 1, ids
    assert nowait(c, "true") > qid  # ids are not reused after a restart


def test_nowait_job_survives_an_immediate_master_kill(fresh_cluster, tmp_path):
    c = fresh_cluster
    blocker = nowait(c, "-c", "4", "-H", "big", "sleep", "60")
    accepted = nowait(c, "-c", "4", "-H", "big", "sh", "-c", "exit 9")
    c.kill("master", signal.SIGKILL)
    c.start_master()
    assert job(c, accepted)["state"] == "queued"
    assert c.grun("-k", str(blocker)).returncode == 0
    assert c.grun("-q", "wait", str(accepted)).returncode == 9


@pytest.mark.parametrize("finish_while_down", [False, True], ids=["finishes-after-restart", "finishes-while-down"])
def test_node_daemon_kill_9_while_a_job_runs(fresh_cluster, tmp_path, finish_while_down):
    c = fresh_cluster
    marker, go = tmp_path / "end", tmp_path / "go"
    client, jid = _start_verbose(c, "-H", "small", "sh", "-c",
                                 f"echo a; {_AWAIT.format(go)}; echo b; echo end >> {marker}; exit 6")
    try:
        assert read_line(client.stdout, 20) == b"a\n"
        pgid = job_pid(c, jid)
        c.kill("small", signal.SIGKILL)
        assert group_alive(pgid), "the job died with its node daemon"
        if finish_while_down:
            go.touch()
            wait_for(marker.exists, 20, what="the job to end while its node is down")
        c.start_node("small")  # (returns once the new daemon has registered: it has adopted the spool's jobs)
        go.touch()
        out, err = client.communicate(timeout=60)
        assert (client.returncode, out) == (6, b"b\n"), err  # re-attached where it left off
    finally:
        _reap(client)
    assert marker.read_text() == "end\n"
    assert c.grun("-q", "wait", str(jid)).returncode == 6
    record = job(c, jid)
    assert (record["state"], record["exit"], record["node"], record["attempt"]) == ("failed", 6, "small", 1)
    assert _history_ids(c).count(jid) == 1
    assert f"re-adopted jobs from the spool: {1 - finish_while_down} running, {int(finish_while_down)} ended" in _log(c, "small")
    # the restarted node takes new work
    r = c.grun("-H", "small", "printenv", "GRUN_NODE")
    assert (r.returncode, r.stdout) == (0, b"small\n")


def test_kill_while_the_jobs_node_is_down_is_applied_when_it_returns(fresh_cluster):
    c = fresh_cluster
    jid = nowait(c, "-H", "small", "sleep", "60")
    wait_state(c, jid, "running")
    pgid = job_pid(c, jid)
    c.kill("small", signal.SIGKILL)
    r = c.grun("-k", str(jid))
    assert (r.returncode, r.stderr) == (0, b"")
    assert group_alive(pgid)
    c.start_node("small")
    assert c.grun("-q", "wait", str(jid)).returncode == 143
    assert job(c, jid)["state"] == "killed"
    wait_for(lambda: not group_alive(pgid), 10, what="the killed job's group to be gone")


def test_a_kill_the_node_did_not_get_is_repeated_until_the_job_ends(fresh_cluster):
    """Issue 10, bug 3: the master's kill call never reaches the node, which does not register
    again; heartbeat replies repeat the kill until the node applies it (a failed call used to be
    forgotten while the client said "killed"). The node daemon is stopped: a harmless first call
    (SIGCONT) times out and closes the master's connection to it, so the kill's call then hangs
    in the connection handshake and fails without its request ever being sent."""
    c = fresh_cluster
    jid = nowait(c, "-H", "small", "sleep", "300")
    wait_state(c, jid, "running")
    pgid = job_pid(c, jid)
    c.procs["small"].send_signal(signal.SIGSTOP)
    try:
        assert c.grun("-k", "-n", "CONT", str(jid)).returncode == 0
        time.sleep(CALL_TIMEOUT + 1)
        r = c.grun("-k", str(jid))
        assert (r.returncode, r.stderr) == (0, b"")
        time.sleep(CALL_TIMEOUT + 1)
    finally:
        c.procs["small"].send_signal(signal.SIGCONT)
    wait_for(lambda: not group_alive(pgid), 20, what="the job to be killed")
    assert c.grun("-q", "wait", str(jid)).returncode == 143
    assert job(c, jid)["state"] == "killed"


def test_node_restart_then_wait_from_a_new_client(fresh_cluster, tmp_path):
    """No client attached at all: the exit code still reaches `grun -q wait` through the restarted node."""
    c = fresh_cluster
    jid = nowait(c, "-H", "big", "sh", "-c", "sleep 1; exit 12")
    wait_state(c, jid, "running")
    c.kill("big", signal.SIGKILL)
    c.start_node("big")
    assert c.grun("-q", "wait", str(jid)).returncode == 12
