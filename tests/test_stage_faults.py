"""Staging (grun.stage) through the faults of a job's life, against real daemons (issue 14's review): a staged
job whose node is lost and that is re-run elsewhere (the detached stager of `grun --nowait`, or the following
`grun`, serves the new run; the stager also when the node daemon restarts before its push), a staged job
re-adopted by its restarted node daemon (its outputs still come back, to the waiting `grun` and to
`grun --attach`), and a staged job whose inputs do not come (a later `grun --attach` sends them; the node's
input deadline ends the job, saying why, and does not cut off a push under way). Every node here stages every
job (`stage: always`)."""

import contextlib
import os
import re
import signal
import time

import psutil
import pytest
from cluster import LocalCluster
from util import job_id_from_verbose, job_pid, read_line, wait_for

from grun import stage
from grun.client import job_spec

STAGED = {"cpus": 1, "memory": 1000, "stage": "always", "heartbeat": 0.5}


@pytest.fixture
def make_cluster():
    made = []

    def make(nodes, **master_extra):
        c = LocalCluster(nodes=nodes, master_extra=master_extra)
        made.append(c)
        return c.start()
    yield make
    for c in made:
        c.stop()


def _reap(*procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _work(c, node: str, job_id: int, name: str = "") -> str:
    return os.path.join(c.root, node, "node", "jobs", str(job_id), "work", name)


@pytest.mark.parametrize("how", ["nowait", "follow"])
def test_a_staged_job_rerun_after_its_node_was_lost_gets_its_inputs_again(make_cluster, tmp_path, how):
    """The job's node is lost (its daemon and the job killed -9), the master re-runs it on the other node;
    its files are served there too, and the outputs that come back are the re-run's: by the detached stager
    of `grun --nowait`, or by the `grun` that follows the job (which says it follows the new run)."""
    c = make_cluster({"a": STAGED, "b": STAGED}, node_timeout=3)
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    runs.mkdir()
    data = os.urandom(1 << 20)
    (cwd / "in.bin").write_bytes(data)
    # the first run waits (to be lost); the second, seeing the first's line in runs/ran, goes on at once
    cmd = (f"echo $GRUN_NODE >> {runs}/ran; [ $(wc -l < {runs}/ran) -gt 1 ] || sleep 60; "
           "cat in.bin > out.bin; echo $GRUN_NODE > node.txt")
    env = dict(c.env, XDG_STATE_HOME=str(tmp_path / "state"))
    args = ("--stage-in", "in.bin", "--stage-out", "out.bin", "--stage-out", "node.txt", cmd)
    if how == "nowait":
        r = c.grun("--nowait", *args, cwd=str(cwd), env=env)
        assert r.returncode == 0 and r.stdout.startswith(b"Job_ID: "), r.stderr
        job_id = int(r.stdout.split()[-1])
    else:
        proc = c.popen("-v", *args, cwd=str(cwd), env=env)
        job_id = job_id_from_verbose(read_line(proc.stderr, 20))  # `grun: job N queued`
    first = wait_for(lambda: (runs / "ran").exists() and (runs / "ran").read_text().strip(), 30,
                     what="the first run to start (its inputs pushed)")
    other = "b" if first == "a" else "a"
    assert os.path.exists(_work(c, first, job_id, "in.bin"))
    pgid = job_pid(c, job_id)
    c.kill(first, signal.SIGKILL)  # the daemon first: else it would report the job's death, a failure
    os.killpg(pgid, signal.SIGKILL)  # what a power cut does to the job
    if how == "follow":
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            _reap(proc)
        assert proc.returncode == 0, err
        assert f"re-queued (node {first} lost".encode() in err and f"following attempt 2 on {other}".encode() in err
        assert b"staging" not in err, err
    final = c.client().wait([job_id], 60)[job_id]
    assert (final["state"], final["exit"], final["node"], final["attempt"]) == ("done", 0, other, 2), final
    assert "lost" in final["requeue_reason"]
    assert (runs / "ran").read_text() == f"{first}\n{other}\n"
    wait_for(lambda: (cwd / "node.txt").exists() and (cwd / "out.bin").exists(), 30,
             what="the stager to bring the re-run's outputs back")
    assert (cwd / "node.txt").read_text() == f"{other}\n"
    assert (cwd / "out.bin").read_bytes() == data
    assert sorted(os.listdir(cwd)) == ["in.bin", "node.txt", "out.bin"]  # no temporary file left
    if how == "nowait":
        assert (tmp_path / "state" / "grun" / "stage.log").read_text() == ""  # nothing went wrong



def test_the_nowait_stager_rides_through_a_node_daemon_restart_before_its_push(make_cluster, tmp_path):
    """The stager learns its job reached its node, but that node's daemon dies before the push (here the stager
    is suspended meanwhile) and comes back without the job (it had not started: no job.json), which the master
    runs again there. The stager must push to the new run, as a following `grun` does."""
    c = make_cluster({"n1": STAGED})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "in.txt").write_text("in\n")
    gate = tmp_path / "gate"
    blocker = c.popen("-v", f"while [ ! -e {gate} ]; do sleep 0.05; done")  # holds the node's one cpu
    try:
        blocker_id = job_id_from_verbose(read_line(blocker.stderr, 20))
        wait_for(lambda: c.client().job(blocker_id)["state"] == "running", 20, what="the blocker to run")
        env = dict(c.env, XDG_STATE_HOME=str(tmp_path / "state"))
        r = c.grun("--nowait", "--stage-in", "in.txt", "--stage-out", "out.txt", "cat in.txt > out.txt",
                   cwd=str(cwd), env=env)
        assert r.returncode == 0, r.stderr
        job_id = int(r.stdout.split()[-1])
        stager = wait_for(lambda: next((p for p in psutil.process_iter(["cmdline", "cwd"]) if p.info["cwd"] == str(cwd)
                                        and "--nowait" in (p.info["cmdline"] or ())), None), 10, what="the stager")
        stager.suspend()  # (it waits for the job to start: the blocker holds the node)
        gate.touch()
        wait_for(lambda: c.client().job(job_id)["state"] == "running", 20, what="the job to reach its node")
        c.kill("n1", signal.SIGKILL)
        c.start_node("n1")
        wait_for(lambda: c.client().job(job_id)["attempt"] == 2, 20, what="the master to run the job again")
        stager.resume()
        final = c.client().wait([job_id], 20)[job_id]
        assert (final["state"], final["exit"]) == ("done", 0), final
        wait_for(lambda: (cwd / "out.txt").exists(), 20, what="the stager to bring the output back")
        assert (cwd / "out.txt").read_text() == "in\n"
    finally:
        _reap(blocker)


def _ended_with_its_stager_stopped(c, tmp_path):
    """A `--nowait` staged job (in.txt in, out.txt out) run to its end while its stager is stopped (SIGSTOP) after
    the push: (cwd, job id, stager); the caller resumes the stager, and kills it at the end."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "in.txt").write_text("in\n")
    gate = tmp_path / "gate"
    env = dict(c.env, XDG_STATE_HOME=str(tmp_path / "state"))
    r = c.grun("--nowait", "--stage-in", "in.txt", "--stage-out", "out.txt",
               f"while [ ! -e {gate} ]; do sleep 0.05; done; cat in.txt > out.txt", cwd=str(cwd), env=env)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.split()[-1])
    wait_for(lambda: os.path.exists(_work(c, "n1", job_id, "in.txt")), 20, what="the stager to push the inputs")
    stager = wait_for(lambda: next((p for p in psutil.process_iter(["cmdline", "cwd"]) if p.info["cwd"] == str(cwd)
                                    and "--nowait" in (p.info["cmdline"] or ())), None), 10, what="the stager")
    stager.suspend()
    try:
        gate.touch()  # (its node holds its end from the master until the stager has the outputs, or stage_wait)
        wait_for(lambda: os.path.exists(os.path.join(c.root, "n1", "node", "jobs", str(job_id), "status.json")), 20,
                 what="the job to end")
    except BaseException:
        stager.kill()
        raise
    return cwd, job_id, stager


def _stager_ended(stager) -> bool:
    return not stager.is_running() or stager.status() == psutil.STATUS_ZOMBIE


def test_the_nowait_stager_rides_through_a_node_daemon_away_when_the_job_ended(make_cluster, tmp_path):
    """The job ended; its node daemon is down (restarting) when the stager comes to pull the outputs: the stager
    tries again until the node is back (within stage.PULL_WAIT), where it gave up at once."""
    c = make_cluster({"n1": STAGED})
    cwd, _, stager = _ended_with_its_stager_stopped(c, tmp_path)
    try:
        c.kill("n1", signal.SIGKILL)
        stager.resume()  # it sees the job ended, and finds its node away
        time.sleep(4)
        c.start_node("n1")
        wait_for(lambda: (cwd / "out.txt").exists(), 30, what="the stager to bring the output back")
        assert (cwd / "out.txt").read_text() == "in\n"
        wait_for(lambda: _stager_ended(stager), 10, what="the stager to end")
    finally:
        with contextlib.suppress(psutil.Error):
            stager.kill()
    assert (tmp_path / "state" / "grun" / "stage.log").read_text() == ""


def test_the_nowait_stager_stops_at_once_when_the_node_forgot_the_ended_job(make_cluster, tmp_path):
    """The job ended and its node forgot it (output_keep passed) before the stager came to pull: the node's daemon
    has no such object (wire.CallRejected), which no wait mends: the stager says so and ends, not retrying for
    stage.PULL_WAIT."""
    c = make_cluster({"n1": {**STAGED, "output_keep": 1, "stage_wait": 2}})  # (its end reported unfetched after 2 s)
    cwd, job_id, stager = _ended_with_its_stager_stopped(c, tmp_path)
    try:
        wait_for(lambda: not os.path.exists(os.path.dirname(_work(c, "n1", job_id))), 20,
                 what="the node to forget the job")
        stager.resume()  # it sees the job ended, and finds its node without it
        wait_for(lambda: _stager_ended(stager), 15, what="the stager to end")
    finally:
        with contextlib.suppress(psutil.Error):
            stager.kill()
    assert not (cwd / "out.txt").exists()
    log = (tmp_path / "state" / "grun" / "stage.log").read_text()
    assert f"job {job_id}: outputs not received, its node no longer has the job" in log, log


def test_a_readopted_staged_job_sends_its_outputs_back_to_its_grun_and_to_attach(make_cluster, tmp_path):
    """The node daemon is killed -9 while two staged jobs run (they go on under their reaper) and restarted on
    the same spool. Job A ends after the restart: its `grun`, still waiting, gets its outputs and exit code.
    Job B's `grun` was killed too, and B ended while the node daemon was down: `grun --attach` gets them."""
    c = make_cluster({"n1": dict(STAGED, cpus=2, output_keep=30)})  # (its janitor: every 7.5 s)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "in.txt").write_text("in\n")
    gates = {k: tmp_path / f"gate-{k}" for k in "AB"}
    procs, ids = {}, {}
    try:
        for k, code in (("A", 3), ("B", 4)):
            procs[k] = c.popen("-v", "--stage-in", "in.txt", "--stage-out", f"out{k}.txt",
                               f"cat in.txt > out{k}.txt; while [ ! -e {gates[k]} ]; do sleep 0.05; done; "
                               f"echo {k} >> out{k}.txt; exit {code}", cwd=str(cwd))
            ids[k] = job_id_from_verbose(read_line(procs[k].stderr, 20))  # `grun: job N queued`
        for k in "AB":
            wait_for(lambda k=k: os.path.exists(_work(c, "n1", ids[k], f"out{k}.txt")), 30,
                     what=f"job {k} to run in its work dir")
        c.kill("n1", signal.SIGKILL)
        _reap(procs.pop("B"))
        gates["B"].touch()  # B ends while its node daemon is down: its reaper writes its status
        status = os.path.join(c.root, "n1", "node", "jobs", str(ids["B"]), "status.json")
        wait_for(lambda: os.path.exists(status), 20, what="job B to end while the node daemon is down")
        c.start_node("n1")
        gates["A"].touch()
        _, err = procs["A"].communicate(timeout=60)
        assert procs["A"].returncode == 3, err
        assert (cwd / "outA.txt").read_text() == "in\nA\n", err
        r = c.grun("--attach", str(ids["B"]), cwd=str(cwd))
        assert r.returncode == 4, r.stderr
        assert (cwd / "outB.txt").read_text() == "in\nB\n", r.stderr
    finally:
        _reap(*procs.values())
    assert sorted(os.listdir(cwd)) == ["in.txt", "outA.txt", "outB.txt"]
    jobs = os.path.join(c.root, "n1", "node", "jobs")
    wait_for(lambda: not {str(i) for i in ids.values()} & set(os.listdir(jobs)), 20,
             what="the node to drop the spools once their outputs were fetched")
    with open(os.path.join(c.root, "n1", "grun.log")) as f:
        told = re.search(r"re-adopted jobs from the spool: (\d+) running, (\d+) ended", f.read())
        assert told and int(told[1]) + int(told[2]) == 2, told  # (QA read "18 jobs" when 1 ran)
    final = c.client().wait(list(ids.values()), 10)
    assert [final[ids[k]]["exit"] for k in "AB"] == [3, 4]
    assert not any(final[ids[k]].get("error") for k in "AB"), final


def test_a_job_whose_submitter_never_pushed_waits_until_attach_sends_its_inputs(make_cluster, tmp_path):
    """The submitter died right after the submission, before it sent the inputs (here: a client that never
    follows): the job waits on its node, not started, and `grun --attach` sends them, then gets the outputs."""
    c = make_cluster({"n1": STAGED})
    (tmp_path / "in.txt").write_text("late\n")
    client = c.client()
    job_id = client.submit_spec(job_spec("cat in.txt > out.txt", cwd=str(tmp_path),
                                         stage_in=[str(tmp_path / "in.txt")], stage_out=[str(tmp_path / "out.txt")]))
    wait_for(lambda: client.job(job_id)["state"] == "running", 20, what="the job to reach its node")
    job_dir = os.path.join(c.root, "n1", "node", "jobs", str(job_id))
    assert os.listdir(job_dir) == ["work"] and os.listdir(_work(c, "n1", job_id)) == []  # no job.json: not started
    r = c.grun("--attach", str(job_id), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "late\n"



def test_a_grun_suspended_before_it_sent_the_inputs_hears_why_its_job_was_killed(make_cluster, tmp_path):
    """`grun` stopped (^Z) while its job was queued; the job reached its node, waited for its inputs, and was
    killed there. Resumed, the grun exits as the killed job it is (143) saying why; so does a later `grun --attach`."""
    c = make_cluster({"n1": STAGED})
    (tmp_path / "in.txt").write_text("in\n")
    gate = tmp_path / "gate"
    blocker = c.popen("-v", f"while [ ! -e {gate} ]; do sleep 0.05; done")  # holds the node's one cpu
    proc = None
    try:
        blocker_id = job_id_from_verbose(read_line(blocker.stderr, 20))
        wait_for(lambda: c.client().job(blocker_id)["state"] == "running", 20, what="the blocker to run")
        proc = c.popen("-v", "--stage-in", "in.txt", "cat in.txt", cwd=str(tmp_path))
        job_id = job_id_from_verbose(read_line(proc.stderr, 20))  # `grun: job N queued`: it waits to start
        proc.send_signal(signal.SIGSTOP)
        assert c.client().job(job_id)["state"] == "queued"
        gate.touch()
        wait_for(lambda: c.client().job(job_id)["state"] == "running", 20, what="the job to reach its node")
        time.sleep(0.2)
        assert c.grun("-k", str(job_id)).returncode == 0
        final = c.client().wait([job_id], 20)[job_id]
        assert (final["state"], final["exit"], final["error"]) == (
            "killed", 143, "staging: killed (signal 15) while staging"), final
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        r = c.grun("--attach", str(job_id), cwd=str(tmp_path))
        assert r.returncode == 143, r.stderr
        for text in (err, r.stderr):
            assert b"grun: staging: killed (signal 15) while staging\n" in text, text
    finally:
        _reap(blocker, *[proc] if proc else [])


# The node key stage_wait: (300 s by default) makes the input deadline 2 s here.
def test_a_job_whose_inputs_never_come_fails_clearly_at_the_input_deadline(make_cluster, tmp_path):
    c = make_cluster({"n1": dict(STAGED, stage_wait=2, output_keep=2)})  # (output_keep: the janitor every 0.5 s)
    (tmp_path / "in.txt").write_text("never sent\n")
    client = c.client()
    job_id = client.submit_spec(job_spec("cat in.txt", cwd=str(tmp_path), stage_in=[str(tmp_path / "in.txt")]))
    final = client.wait([job_id], 10)[job_id]
    assert (final["state"], final["exit"]) == ("failed", 255), final
    assert final["error"] == "staging: no client sent the inputs within 2 s", final
    assert final["end_time"] - final["start_time"] < 10  # (started: when it reached its node)
    r = c.grun("--attach", str(job_id), cwd=str(tmp_path))  # a client that comes too late hears why, once
    assert r.returncode == 255 and b"no client sent the inputs within 2 s" in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1, r.stderr


def test_the_input_deadline_does_not_cut_off_a_push_under_way(make_cluster, tmp_path):
    """The deadline bounds the wait for a client, not the transfer: here the push stalls (its grun stopped) past
    it, and resumes. (With 300 s, any input that takes over 5 minutes to send, 30 GB at 1 Gb/s, failed.)"""
    c = make_cluster({"n1": dict(STAGED, stage_wait=2, output_keep=2)})  # (output_keep: the janitor every 0.5 s)
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(1 << 30)  # sparse: cheap to read
    proc = c.popen("-v", "-M", "wc -c %i:big.bin", cwd=str(tmp_path))
    try:
        job_id = job_id_from_verbose(read_line(proc.stderr, 20))  # `grun: job N queued`
        work = _work(c, "n1", job_id)
        wait_for(lambda: any(n.startswith(stage.PART) and os.path.getsize(os.path.join(work, n)) > 10 << 20
                             for n in (os.listdir(work) if os.path.isdir(work) else ())), 30, 0.005, "a file half sent")
        proc.send_signal(signal.SIGSTOP)
        time.sleep(3.5)  # past the deadline, with the push under way
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (0, b"1073741824 big.bin\n"), err
    finally:
        _reap(proc)
