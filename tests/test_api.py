"""The Python client API (issue 6, "Python client API") against real daemons: `from grun import Client`,
submit -> Job, state, wait, output whole and streamed (from the node, not the master), kill,
suspend/resume, the lists, and grun's own exceptions (never a raw Pyro5 error)."""
from __future__ import annotations

import os
import time

import Pyro5.errors
import pytest
from cluster import free_port
from util import wait_for

from grun import (
    BadArgument,
    Client,
    GrunError,
    Job,
    JobNotFound,
    MasterUnreachable,
    Timeout,
    wire,
)
from grun.client import job_spec


def test_client_finds_the_master_like_the_command_line(cluster, monkeypatch):
    monkeypatch.setenv("GRUN_CONF", cluster.client_config)
    names = {n["name"] for n in Client().nodes()}
    assert names == {"big", "small"}
    client = Client(f"127.0.0.1:{cluster.port}")
    assert (client.host, client.port) == ("127.0.0.1", cluster.port)
    assert {n["name"] for n in client.nodes()} == names


def test_submit_wait_and_output(cluster, tmp_path):
    client = cluster.client()
    job = client.submit("echo out $GREETING; pwd; echo err >&2; exit 3", cpus=0.5, memory="200M",
                        priority=30, cwd=str(tmp_path), env={"GREETING": "hello"})
    assert isinstance(job, Job) and job.id > 0
    assert job.wait(30) == 3
    assert job.state == "failed"
    assert job.stdout() == f"out hello\n{tmp_path}\n".encode()
    assert job.stderr() == b"err\n"
    assert job.stdout() == f"out hello\n{tmp_path}\n".encode(), "reading the output keeps it"
    info = job.info()
    assert (info["cpus"], info["memory"], info["priority"]) == (0.5, 200, 30)
    argv = client.submit(["sh", "-c", 'printf "%s|" "$@"', "sh", "a b", "c"])
    assert argv.wait(30) == 0 and argv.stdout() == b"a b|c|"


def test_output_streams_while_the_job_runs(cluster, tmp_path):
    done = tmp_path / "done"
    job = cluster.client().submit(f"echo first; sleep 1.5; echo second; touch {done}")
    chunks = job.stdout(stream=True)
    assert next(chunks) == b"first\n"
    assert not done.exists(), "the first chunk only came once the job had ended"
    assert b"".join(chunks) == b"second\n"
    assert job.wait(10) == 0


def test_wait_with_a_timeout_and_kill(cluster):
    client = cluster.client()
    job = client.submit("sleep 60")
    wait_for(lambda: job.state == "running", what="the job to run")
    start = time.monotonic()
    with pytest.raises(Timeout):
        job.wait(timeout=0.5)
    assert time.monotonic() - start < 5
    with pytest.raises(TimeoutError):  # Timeout is also the builtin kind
        job.wait(timeout=0.1)
    assert job.kill() is True
    assert job.wait(30) == 143
    assert job.state == "killed"
    assert job.kill() is False, "an ended job is not live"


def test_suspend_and_resume(cluster):
    job = cluster.client().submit("for i in $(seq 40); do echo $i; sleep 0.05; done")
    first = job.stdout(stream=True)
    assert next(first) == b"1\n"  # its process is there to be stopped
    first.close()
    try:
        assert job.suspend() is True
        wait_for(lambda: job.state == "suspended", what="the job to be suspended")
        assert job.resume() is True
        wait_for(lambda: job.state in ("running", "done"), what="the job to run again")
        assert job.wait(30) == 0
        assert job.stdout().split() == [str(i).encode() for i in range(1, 41)]
    finally:
        job.kill(9)
        job.wait(30)


def test_lists(cluster):
    client = cluster.client()
    job = client.submit("sleep 30", name=f"api-lists-{os.getpid()}")
    try:
        wait_for(lambda: job.state == "running", what="the job to run")
        live = {j["id"]: j for j in client.jobs()}
        assert live[job.id]["state"] == "running"
        assert live[job.id].get("name") == f"api-lists-{os.getpid()}"
        nodes = {n["name"]: n for n in client.nodes()}
        assert sum(n["running"] for n in nodes.values()) >= 1
    finally:
        job.kill(9)
        job.wait(30)
    wait_for(lambda: job.id in [j["id"] for j in client.history(50)], 10, what="the job in the history")
    assert client.get(job.id) == job
    # the README's Python API takes keywords: history(limit=, user=, grep=), kill(ids, sig=, force=)
    assert [j["id"] for j in client.history(limit=1, grep="sleep")] == [job.id]
    assert client.kill([job.id], sig=9, force=False) == {job.id: False}


def test_errors_are_grun_exceptions(cluster):
    client = cluster.client()
    with pytest.raises(JobNotFound):
        client.get(999999)
    with pytest.raises(JobNotFound):
        Job(client, 999999).wait(5)
    with pytest.raises(GrunError):
        client.submit("true", memory="lots")
    with pytest.raises(GrunError):
        client.submit("true", cwd="relative/dir/../x", cpus=-1)
    with pytest.raises(GrunError):
        client.submit([])
    for bad in (42, None):  # (a bare TypeError: 'int' object is not iterable)
        with pytest.raises(GrunError, match="a command line"):
            client.submit(bad)
    with pytest.raises(GrunError, match="a job id or a list"):
        client.kill(None)
    for bad in ("name", "12x", ["7", "x"]):
        with pytest.raises(GrunError, match="^not a job id: '(name|12x|x)'$"):
            client.kill(bad)
    with pytest.raises(GrunError, match="^not a job id: 'name'$"):
        client.wait("name")
    assert client.kill(999999) == {999999: False}
    with pytest.raises(GrunError):
        Client("not a host:port:at all")
    timed = client.submit("true", time="1h", after=[Job(client, client.submit("true").id)])  # (a Job: its id)
    assert timed.wait(30) == 0 and timed.info()["time"] == 3600
    start = time.monotonic()
    with pytest.raises(MasterUnreachable) as err:
        Client(f"127.0.0.1:{free_port()}", connect_wait=0.5).jobs()
    assert time.monotonic() - start < 5
    assert not isinstance(err.value, Pyro5.errors.PyroError)


def test_bad_arguments_are_refused_before_anything_is_sent():
    """Client.submit raised a plain GrunError for what grun.remote raises BadArgument (a ValueError) for, and only once
    the master had answered; submit_many(["true"]) a bare TypeError. Here no master is there: nothing was sent."""
    dead = Client(f"127.0.0.1:{free_port()}", connect_wait=0.2)
    for cmd, bad in (("true", {"cpus": -1}), ("true", {"memory": "lots"}), ("true", {"time": "soon"}),
                     ("true", {"after": [None]}), ("true", {"retries": -1}), ("true", {"cpu": 2}), (42, {}), ([], {}),
                     ({"cmd": ["true"], "cpus": -1}, {})):
        with pytest.raises(BadArgument) as err:
            dead.submit(cmd, **bad)
        assert isinstance(err.value, ValueError) and isinstance(err.value, GrunError), err.value
    for specs in (["true"], [{"cmd": "true"}], [{"cmd": ["true"], "name": "a\nb"}], {"cmd": ["true"]}):
        with pytest.raises(BadArgument):
            dead.submit_many(specs)
    with pytest.raises(BadArgument, match="^submit_many takes a list of job specs, not dict$"):
        dead.submit_many({"cmd": ["true"]}, check=False)
    with pytest.raises(MasterUnreachable):  # (a good one is sent)
        dead.submit("true", time="1h", after=[7, "prep"])
    with pytest.raises(MasterUnreachable):  # (a generator of specs is a list of them: review)
        dead.submit_many(job_spec(c) for c in ("true", "false"))
    # time= as -t and edits read it (review: "30" was 30 s here, 30 minutes there; "1:30:00" refused)
    assert [job_spec("true", time=t)["time"] for t in (30, "30", "1:30:00", "90s")] == [30, 1800, 5400, 90]


def test_release_lets_the_node_drop_the_output(cluster):
    job = cluster.client().submit("echo kept")
    assert job.wait(30) == 0 and job.stdout() == b"kept\n" and job.stdout() == b"kept\n"
    job.release()
    wait_for(lambda: _gone(job), 20, what="the output dropped")


def _gone(job: Job) -> bool:
    try:
        job.stdout()
    except GrunError as exc:
        return "no longer kept" in str(exc)
    return False


def test_one_client_in_many_threads(cluster):
    from concurrent.futures import ThreadPoolExecutor
    client = cluster.client()
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda i: client.submit(f"echo {i}", cpus=0.1), range(16)))
        codes = list(pool.map(lambda j: j.wait(30), jobs))
        outs = list(pool.map(lambda j: j.stdout(), jobs))
    assert codes == [0] * 16
    assert outs == [f"{i}\n".encode() for i in range(16)]


def test_a_reader_that_stops_early_lets_go(cluster):
    import threading
    job = cluster.client().submit("while true; do echo tick; sleep 0.05; done")
    try:
        chunks = job.stdout(stream=True)
        assert next(chunks).startswith(b"tick")
        chunks.close()
        wait_for(lambda: not any(t.name == f"grun-job-{job.id}-stdout" for t in threading.enumerate()), 10,
                 what="the follower thread to end")
    finally:
        job.kill(9)
        job.wait(30)


def _follow_through(cluster, monkeypatch, answer) -> float:
    """`grun CMD`'s follow of `exit 3` with the master's answers to wait and job through `answer(real, method,
    args)` (real(): the real master's): its exit code is the stream's, 3. Returns how long the settling took."""
    client, real_call = cluster.client(), Client.call
    job_id = client.submit("exit 3").id
    monkeypatch.setattr(Client, "call", lambda self, method, *args, **kwargs: answer(
        lambda: real_call(self, method, *args, **kwargs), method, args))
    start = time.monotonic()
    assert client.follow(job_id, stdout_fd=lambda b: None, stderr_fd=lambda b: None) == 3
    return time.monotonic() - start


def test_follow_returns_once_the_master_has_the_end_however_late(cluster, monkeypatch):
    """`grun CMD` returns once the master has recorded the job's end, so that `grun -q history` right
    after shows it: a master that records it after a first wait ran out (seconds, under load) is
    waited for, not given up on after a fixed time."""
    waits = []

    def answer(real, method, args):
        if method == "wait":  # the master has not recorded the end by the first wait's end
            waits.append(args[0])
            if len(waits) == 1:
                return {}
        if method == "job" and len(waits) == 1:  # meanwhile it shows the job as still running there
            return dict(real(), state="running")
        return real()

    _follow_through(cluster, monkeypatch, answer)
    assert len(waits) == 2, waits  # waited again, and the second wait had the record


def test_follow_does_not_wait_for_the_record_of_a_master_away(cluster, monkeypatch):
    """A master away after the job's output ended: `grun CMD` returns the stream's exit code at once."""
    waits = []

    def answer(real, method, args):
        if method == "wait":
            waits.append(args[0])
            raise MasterUnreachable("cannot reach the grun master: gone")
        return real()

    assert _follow_through(cluster, monkeypatch, answer) < 10
    assert len(waits) == 1, waits


def test_follow_does_not_wait_for_the_record_of_a_run_superseded(cluster, monkeypatch):
    """The master shows the job running again (its node was lost after the stream's end): not waited for."""
    waits = []

    def answer(real, method, args):
        if method == "wait":
            waits.append(args[0])
            return {} if len(waits) < 5 else real()  # bounded if broken
        if method == "job" and waits:
            job = real()
            return dict(job, state="running", attempt=(job.get("attempt") or 0) + 1)
        return real()

    _follow_through(cluster, monkeypatch, answer)
    assert len(waits) == 1, waits


def test_follow_waits_for_the_record_of_the_end_settle_wait_at_most(cluster, monkeypatch):
    """An end report that never comes (its node's heartbeats still do): waited for SETTLE_WAIT in all."""
    import grun.follow
    monkeypatch.setattr(grun.follow, "SETTLE_WAIT", 0.5)
    waits = []

    def answer(real, method, args):
        if method == "wait":
            waits.append(args[1])
            if len(waits) < 20:  # bounded if broken
                time.sleep(args[1])
                return {}
        if method == "job" and waits:
            return dict(real(), state="running")
        return real()

    _follow_through(cluster, monkeypatch, answer)
    # (short waits first, then longer: a retry or a re-run shows in the job's record before the end does)
    assert 1 <= len(waits) < 20 and sum(waits) <= 0.6, waits


def test_follow_tells_on_start_of_each_run(cluster, tmp_path):
    """A retried job's next run was told by a note only, which callers (grun.call_follow) matched by its words."""
    flag, client, runs, out = tmp_path / "ran", cluster.client(), [], []
    job = client.submit(f"sleep 1; test -e {flag} || {{ touch {flag}; exit 3; }}; echo second", retries=1)
    code = client.follow(job.id, on_start=lambda j: runs.append(j["attempt"]), stdout_fd=out.append,
                         stderr_fd=lambda data: None)
    assert (code, runs, b"".join(out)) == (0, [1, 2], b"second\n")


def test_a_run_not_on_its_node_yet_is_not_attached_to_as_the_previous_one(cluster):
    """The master records a retried job's next run when it offers it; until its node has it, an attach reached the
    ended run (under load, a retried job's follower returned the first run's exit 3 with no output)."""
    client = cluster.client()
    job = client.submit("exit 3")
    client.wait([job.id], 30)
    with client.supervisor(job.id, client.job(job.id)) as sup:
        assert "token" in sup.attach(0, 0, False, 1)
        with pytest.raises((LookupError, wire.CallRejected), match="attempt 2 has not reached this node yet"):
            sup.attach(0, 0, False, 2)
