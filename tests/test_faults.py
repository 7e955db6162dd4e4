"""Faults inflicted on real daemons (issue 3): kill -9 of the master, of node daemons and of clients at
several points of a job's life, a node that goes silent, a nearly full disk, a torn journal and a
corrupt snapshot, a graceful restart and a config reload, and every retried message delivered twice.
Each test checks that every job ran once and appears once in history, with its exit code and output.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest
from cluster import LocalCluster
from util import (
    job,
    job_id_from_verbose,
    job_pid,
    nowait,
    read_line,
    wait_for,
    wait_state,
)

from grun import registry, spool
from grun.client import MasterUnreachable
from grun.core import jobs as J

FAST = {"heartbeat": 0.5}
AS_US = {"cwd": "/", "uid": os.getuid(), "gid": os.getgid()}  # else a root master runs them as nobody


@pytest.fixture
def make_cluster():
    made = []

    def make(nodes=None, start=True, **master_extra):
        c = LocalCluster(nodes=nodes or {"n1": {"cpus": 4, "memory": 4000, **FAST},
                                         "n2": {"cpus": 4, "memory": 4000, **FAST}},
                         master_extra=master_extra)
        made.append(c)
        if start:
            c.start()
        return c
    yield make
    for c in made:
        for name in list(c.procs):  # a stopped daemon cannot be stopped by SIGTERM
            try:
                c.procs[name].send_signal(signal.SIGCONT)
            except (ProcessLookupError, OSError):
                pass
        c.stop()


def _history(c) -> list[dict]:
    return c.client().history(100000)


def _once_each(c, ids) -> dict[int, dict]:
    """Every id exactly once in history; returns id -> record. (A finished job reaches history a
    moment after `wait` returns it: the master adds it once its record is on disk.)"""
    seen: dict[int, list] = {}

    def all_there():
        seen.clear()
        for rec in _history(c):
            seen.setdefault(rec["id"], []).append(rec)
        return all(i in seen for i in ids)
    try:
        wait_for(all_there, 10, what="the jobs to reach history")
    except AssertionError:
        pass
    assert all(len(seen.get(i, [])) == 1 for i in ids), {i: len(seen.get(i, [])) for i in ids}
    return {i: seen[i][0] for i in ids}


def _spool(c, node: str, job_id: int, name: str = "stdout") -> bytes:
    with open(os.path.join(c.root, node, "node", "jobs", str(job_id), name), "rb") as f:
        return f.read()


def _reap(*procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


def _job_script(runs, k: int, sleep: float = 0.0) -> str:
    return f"echo $GRUN_JOB_ID >> {runs}/{k}; echo out-{k}; sleep {sleep}; exit {k % 7}"


def _check_runs(runs, ids_by_k: dict[int, int]) -> None:
    """Each job's command ran exactly once (its run file has one line, its own id)."""
    for k, job_id in ids_by_k.items():
        assert (runs / str(k)).read_text() == f"{job_id}\n", (k, (runs / str(k)).read_text())


# ---- master crash ------------------------------------------------------------------------------

def test_master_kill_9_during_a_burst_loses_and_duplicates_nothing(make_cluster, tmp_path):
    """Submissions, dispatches and completions in flight while the master is killed three times."""
    c = make_cluster()
    runs = tmp_path / "runs"
    runs.mkdir()
    n = 60
    ids: dict[int, int] = {}
    errors: list = []

    def submit_all():
        client = c.client(connect_wait=30)
        for k in range(n):
            spec = {"cmd": [_job_script(runs, k, 0.05 * (k % 4))], "shell": True, "token": f"burst-{k}", **AS_US}
            while True:
                try:
                    ids[k] = client.submit_spec(spec)
                    break
                except MasterUnreachable:
                    continue  # same token: a submission the dead master had accepted is not queued twice
                except Exception as exc:
                    errors.append(exc)
                    return

    submitter = threading.Thread(target=submit_all)
    submitter.start()
    for pause in (0.3, 0.6, 0.4):
        time.sleep(pause)
        c.kill("master", signal.SIGKILL)
        c.start_master()
    submitter.join(120)
    assert not errors and len(ids) == n
    assert len(set(ids.values())) == n, "a retried submission was queued twice"
    done = c.client().wait(list(ids.values()))
    assert {k: done[i]["exit"] for k, i in ids.items()} == {k: k % 7 for k in range(n)}
    records = _once_each(c, ids.values())
    _check_runs(runs, ids)
    for k, job_id in ids.items():
        assert records[job_id]["attempt"] == 1
        assert _spool(c, records[job_id]["node"], job_id) == f"out-{k}\n".encode()


def test_clients_ride_through_a_master_outage_of_several_seconds(make_cluster, tmp_path):
    c = make_cluster(nodes={"solo": {"cpus": 1, "memory": 2000, **FAST}})
    running = c.popen("-v", "sh", "-c", "echo a; sleep 2; echo b; exit 5")
    queued = c.popen("-v", "sh", "-c", "echo q; exit 6")
    try:
        assert read_line(running.stderr, 20).endswith(b" queued\n")
        assert read_line(running.stdout, 20) == b"a\n"
        rid = job_id_from_verbose(read_line(running.stderr, 20))
        qid = job_id_from_verbose(read_line(queued.stderr, 20))
        c.kill("master", signal.SIGKILL)
        time.sleep(5)  # the running job ends while the master is away; the queued one waits
        c.start_master()
        out, err = running.communicate(timeout=60)
        assert (running.returncode, out) == (5, b"b\n"), err
        out, err = queued.communicate(timeout=60)
        assert (queued.returncode, out) == (6, b"q\n"), err
    finally:
        _reap(running, queued)
    c.client().wait([rid, qid])  # a client may exit before its node's report reached the master
    records = _once_each(c, [rid, qid])
    assert (records[rid]["exit"], records[qid]["exit"]) == (5, 6)
    assert records[rid]["usage"]["wall"] >= 2  # the usage measured while the master was down arrived


def test_long_polls_ride_through_a_master_restart_from_when_it_cut_them(make_cluster):
    """QA: `grun -q wait` waiting longer than connect_wait, its long poll its only call yet, failed at once when
    the master restarted: its ride-through counted from the poll's start, and no answer had shown it reachable."""
    c = make_cluster(nodes={"solo": {"cpus": 1, "memory": 1000, **FAST}})
    running, queued = nowait(c, "sh", "-c", "sleep 8; exit 4"), nowait(c, "sh", "-c", "exit 6")  # (it waits)
    wait_state(c, running, "running")
    got, errors = {}, []

    def waiter(name, call):
        try:
            got[name] = call(c.client(connect_wait=2))  # a new client: its long poll its only call
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=waiter, args=("ended", lambda client: client.wait([running]))),
               threading.Thread(target=waiter, args=("started", lambda client: client.wait_started(queued)))]
    for t in threads:
        t.start()
    time.sleep(3)  # past connect_wait
    c.kill("master", signal.SIGKILL)
    time.sleep(3)  # away longer than connect_wait: its cut call showed it was reached (a restart)
    c.start_master()
    for t in threads:
        t.join(60)
    assert not errors and got["ended"][running]["exit"] == 4 and got["started"]["id"] == queued, (errors, got)


def test_a_submission_the_master_died_on_is_retried_until_it_is_back(make_cluster):
    """The request reached the master, which died before answering: it may have queued the job, so
    the client keeps trying (same token) for longer than a master that never answered would get."""
    c = make_cluster(nodes={"n1": {"cpus": 1, "memory": 1000, **FAST}})
    client = c.client(connect_wait=2)
    client.call("ping")
    got, errors = [], []

    def submit():
        try:
            got.append(client.submit_spec({"cmd": ["sh", "-c", "exit 3"], **AS_US}))
        except Exception as exc:
            errors.append(exc)

    c.procs["master"].send_signal(signal.SIGSTOP)  # the request waits in its socket
    t = threading.Thread(target=submit)
    t.start()
    time.sleep(0.5)
    c.kill("master", signal.SIGKILL)  # the connection breaks under the sent request
    time.sleep(4)  # twice connect_wait
    c.start_master()
    t.join(30)
    assert not errors and len(got) == 1, errors
    assert c.client().wait(got)[got[0]]["exit"] == 3
    assert [j["id"] for j in c.client().jobs()] == []
    _once_each(c, got)


# ---- node daemon crash -------------------------------------------------------------------------

def test_node_kill_9_while_jobs_start_and_run(make_cluster, tmp_path):
    """Killed while a burst is being dispatched, and again while the jobs run: each runs once."""
    c = make_cluster(nodes={"n1": {"cpus": 8, "memory": 8000, **FAST}})
    runs = tmp_path / "runs"
    runs.mkdir()
    client = c.client()
    ids = {k: client.submit_spec({"cmd": [_job_script(runs, k, 1.5)], "shell": True, **AS_US})
           for k in range(16)}
    time.sleep(0.05)
    c.kill("n1", signal.SIGKILL)
    c.start_node("n1")
    time.sleep(0.7)
    c.kill("n1", signal.SIGKILL)
    c.start_node("n1")
    done = client.wait(list(ids.values()))
    assert {k: done[i]["exit"] for k, i in ids.items()} == {k: k % 7 for k in ids}
    _once_each(c, ids.values())
    _check_runs(runs, ids)
    for k, job_id in ids.items():
        assert _spool(c, "n1", job_id) == f"out-{k}\n".encode()
    with open(f"{c.root}/n1/grun.log") as f:
        assert "re-adopted" in f.read()


def test_a_node_back_without_its_jobs_has_them_declared_lost_and_rerun(make_cluster, tmp_path):
    """The node's spool went (disk replaced), or its host rebooted (supervisor gone, job gone): lost and
    re-queued. A supervisor that died on a host that did not reboot: its job is ended, and it failed."""
    c = make_cluster(nodes={"n1": {"cpus": 4, "memory": 4000, **FAST}})
    runs = tmp_path / "runs"
    runs.mkdir()
    client = c.client()
    wiped, rebooted, orphaned = (
        client.submit_spec({"cmd": [f"echo x >> {runs}/{name}; sleep 2; exit 4"], "shell": True, **AS_US})
        for name in ("wiped", "rebooted", "orphaned"))
    pids = {i: job_pid(c, i) for i in (wiped, rebooted, orphaned)}
    jobs_dir = os.path.join(c.root, "n1", "node", "jobs")
    # the supervisor of each job: the node's reaper, named in its pid file ("<pid> <reaper pid>.<tag>")
    sups = {i: int(_spool(c, "n1", i, "pid").split()[1].split(b".")[0]) for i in pids}
    c.kill("n1", signal.SIGKILL)
    # the supervisor first, or it may record its job's death (137) before it goes: the orphaned job still runs
    for pid in set(sups.values()):
        os.kill(pid, signal.SIGKILL)
    for i in (wiped, rebooted):  # what a power cut does to them
        os.killpg(pids[i], signal.SIGKILL)
    shutil.rmtree(os.path.join(jobs_dir, str(wiped)))
    os.utime(os.path.join(jobs_dir, str(rebooted), "pid"), (0, 0))  # started before this boot
    c.start_node("n1")
    done = client.wait([wiped, rebooted, orphaned])
    for i, name in ((wiped, "wiped"), (rebooted, "rebooted")):
        assert (done[i]["state"], done[i]["exit"], done[i]["attempt"]) == ("failed", 4, 2), done[i]
        assert (runs / name).read_text() == "x\nx\n"  # once per dispatch, and the record says so
    assert "came back without it" in done[wiped]["requeue_reason"]
    assert "rebooted" in done[rebooted]["requeue_reason"]
    assert (done[orphaned]["state"], done[orphaned]["exit"], done[orphaned]["attempt"]) == ("failed", 255, 1)
    assert "supervisor vanished" in done[orphaned]["error"]
    wait_for(lambda: not _group_alive(pids[orphaned]), 10, what="the orphaned job to be ended")
    _once_each(c, [wiped, rebooted, orphaned])


@pytest.mark.parametrize("timeout", [10, 3])
def test_a_node_killed_with_its_jobs_has_them_declared_lost(make_cluster, tmp_path, timeout):
    """QA: the node daemon, its reaper and its jobs killed at once (an OOM kill of their cgroup), the daemon back within
    node_timeout (10) or past it (3: its pinned job re-queued meanwhile): its jobs failed 255 ("supervisor vanished"),
    never ran again, and grun said nothing. They never finished: lost, re-queued (--norequeue: ended lost)."""
    c = make_cluster(nodes={"n1": {"cpus": 4, "memory": 4000, **FAST}}, node_timeout=timeout)
    runs = tmp_path / "runs"
    follower = c.popen("-v", "-H", "n1", "sh", "-c", f"[ -e {runs} ] && exit 6; touch {runs}; sleep 60")
    lone = c.popen("-v", "--norequeue", "sleep", "60")
    try:
        jid, once = (job_id_from_verbose(read_line(p.stderr, 20) and read_line(p.stderr, 20)) for p in (follower, lone))
        pids = [job_pid(c, i) for i in (jid, once)]
        reaper = int(_spool(c, "n1", jid, "pid").split()[1].split(b".")[0])
        c.kill("n1", signal.SIGKILL)
        os.kill(reaper, signal.SIGKILL)
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)
        if timeout == 3:
            wait_state(c, once, "lost")
            assert job(c, jid)["state"] == "queued"
        c.start_node("n1")
        out, err = follower.communicate(timeout=60)
        lone_err = lone.communicate(timeout=30)[1]
    finally:
        _reap(follower, lone)
    assert follower.returncode == 6, (out, err)
    assert f"job {jid} was re-queued (node n1: job supervisor vanished".encode() in err, err
    why = "n1 lost (silent for" if timeout == 3 else "n1: job supervisor vanished"  # (then no late end: it had none)
    assert lone.returncode == 255 and f"job {once} lost: node {why}".encode() in lone_err, lone_err
    done = _once_each(c, [jid, once])
    assert (done[jid]["state"], done[jid]["exit"]) == ("failed", 6) and "its job with it" in done[jid]["requeue_reason"]
    assert (done[once]["state"], done[once]["exit"]) == ("lost", 255) and "later" not in done[once]["error"], done[once]


# ---- client loss -------------------------------------------------------------------------------

def test_attach_after_the_client_was_killed_and_output_keep(make_cluster, tmp_path):
    c = make_cluster(nodes={"n1": {"cpus": 2, "memory": 2000, "output_keep": 5, **FAST}})
    gate = tmp_path / "gate"
    proc = c.popen("-v", "sh", "-c", f"echo a; while [ ! -e {gate} ]; do sleep 0.05; done; echo b; echo e >&2; exit 4")
    try:
        read_line(proc.stderr, 20)
        jid = job_id_from_verbose(read_line(proc.stderr, 20))
        assert read_line(proc.stdout, 20) == b"a\n"
        proc.kill()  # the submitter dies; the job does not notice
    finally:
        _reap(proc)
    tail = c.popen("--attach", str(jid), "--tail")
    whole = c.popen("--attach", str(jid))
    for proc in (tail, whole):
        wait_for(lambda proc=proc: _streaming(c, proc), 20, what="the attached client's stream to be open")
    gate.touch()
    out, err = tail.communicate(timeout=30)
    assert (tail.returncode, out, err) == (4, b"b\n", b"e\n")
    out, err = whole.communicate(timeout=30)
    assert (whole.returncode, out, err) == (4, b"a\nb\n", b"e\n")
    assert c.grun("-q", "wait", str(jid)).returncode == 4
    # fetched: the node lets the spool go; a later attach still exits with the job's code
    job_dir = os.path.join(c.root, "n1", "node", "jobs", str(jid))
    wait_for(lambda: not os.path.exists(job_dir), 10, what="the fetched spool to be removed")
    r = c.grun("--attach", str(jid))
    assert (r.returncode, r.stdout) == (4, b"")
    assert b"no longer kept" in r.stderr

    # never fetched: kept for output_keep, then removed
    kept = nowait(c, "sh", "-c", "echo kept; exit 3")
    assert c.grun("-q", "wait", str(kept)).returncode == 3
    kept_dir = os.path.join(c.root, "n1", "node", "jobs", str(kept))
    assert os.path.exists(kept_dir), "removed before output_keep"
    wait_for(lambda: not os.path.exists(kept_dir), 15, what="the spool to expire after output_keep")
    assert time.time() - job(c, kept)["end_time"] > 4.5


def _streaming(c, proc) -> bool:
    """Whether a client process has its side-channel stream open (a connection to neither the
    master nor a node's Pyro5 daemon)."""
    pyro_ports = {c.port} | {int(n["uri"].rsplit(":", 1)[1]) for n in c.client().nodes() if n.get("uri")}
    try:
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(k.status == psutil.CONN_ESTABLISHED and k.raddr and k.raddr.port not in pyro_ports for k in conns)


# ---- node loss ---------------------------------------------------------------------------------

def test_a_silent_node_s_jobs_are_requeued_and_its_stale_copies_killed(make_cluster, tmp_path):
    c = make_cluster(nodes={"a": {"cpus": 3, "memory": 3000, **FAST}, "b": {"cpus": 3, "memory": 3000, **FAST}},
                     node_timeout=3)
    runs = tmp_path / "runs"
    runs.mkdir()

    def script(k, sleep, code, rerun_sleep=None):
        """Logs its start and end; a second run (the marker file exists) sleeps rerun_sleep."""
        rerun = f"[ -e {runs}/{k} ] && s={rerun_sleep}; " if rerun_sleep is not None else ""
        return f"s={sleep}; {rerun}echo start $GRUN_NODE >> {runs}/{k}; echo start $GRUN_NODE; sleep $s; " \
               f"echo end $GRUN_NODE >> {runs}/{k}; echo end; exit {code}"

    # the mover reads its input to the end: its second run must get an end, not wait forever (not a pipe's: not re-run)
    mover = c.popen("-v", "sh", "-c", script("mover", 20, 3, rerun_sleep=1).replace("echo end $", "cat; echo end $"),
                    stdin=subprocess.DEVNULL)
    try:
        read_line(mover.stderr, 20)
        mid = job_id_from_verbose(read_line(mover.stderr, 20))
        lost_node = job(c, mid)["node"]
        other = "b" if lost_node == "a" else "a"
        pinned = nowait(c, "-H", lost_node, "sh", "-c", script("pinned", 10, 0))
        fragile = nowait(c, "--norequeue", "-H", lost_node, "sh", "-c", script("fragile", 30, 0))
        wait_state(c, pinned, "running")
        wait_state(c, fragile, "running")
        fragile_pid = job_pid(c, fragile)

        c.procs[lost_node].send_signal(signal.SIGSTOP)  # silent: no heartbeats, no answers
        moved = wait_for(
            lambda: (j := job(c, mid))["state"] == "running" and j["node"] == other and j,
            20, what="the job to run again elsewhere")
        assert (moved["attempt"], moved["requeues"]) == (2, 1) and "lost" in moved["requeue_reason"]
        assert job(c, pinned)["state"] == "queued"  # nowhere else to go
        gone = job(c, fragile)
        assert (gone["state"], gone["exit"]) == ("lost", 255)
        c.procs[lost_node].send_signal(signal.SIGCONT)  # back: the stale copies are killed, the pinned job kept

        out, err = mover.communicate(timeout=60)  # (its first run's output began: not the next's too, test_follow_ends)
        assert (mover.returncode, out) == (255, f"start {lost_node}\n".encode()), err
        assert b"was re-queued" in err, err
    finally:
        _reap(mover)
    assert c.grun("-q", "wait", str(pinned)).returncode == 0
    records = _once_each(c, [mid, pinned, fragile])
    assert (records[mid]["node"], records[mid]["exit"], records[mid]["attempt"]) == (other, 3, 2)
    assert (records[pinned]["node"], records[pinned]["attempt"], records[pinned]["state"]) == (lost_node, 1, "done")
    assert records[fragile]["state"] == "lost"
    waited = c.grun("-q", "wait", str(fragile))  # says why (it exited 255 without a word)
    assert waited.returncode == 255 and f"job {fragile} lost: node {lost_node}".encode() in waited.stderr, waited
    # the stale copy of the moved job was killed before its end; the pinned job ran once, to its end
    assert (runs / "mover").read_text() == f"start {lost_node}\nstart {other}\nend {other}\n"
    assert (runs / "pinned").read_text() == f"start {lost_node}\nend {lost_node}\n"
    wait_for(lambda: not _group_alive(fragile_pid), 15, what="the lost job's stale copy to be killed")
    assert (runs / "fragile").read_text() == f"start {lost_node}\n"
    end = wait_for(lambda: spool.read(os.path.join(c.root, lost_node, "node", "jobs", str(mid)), spool.STATUS), 15,
                   what="the stale copy's end")  # (its reader may catch it half-written: again)
    assert end["signal"] == signal.SIGTERM
    with open(os.path.join(c.root, lost_node, "grun.log")) as f:
        assert f"job {mid}: killing this stale copy" in f.read()


def test_a_master_that_hears_no_node_declares_none_lost(make_cluster, tmp_path):
    """QA: a master that could not hear its nodes (restarted with a wrong bind:) declared them all lost and, back, ran
    their jobs again on the first node to register. Every node silent past node_timeout: the master is cut off."""
    c = make_cluster(nodes={n: {"cpus": 2, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    runs = tmp_path / "runs"
    runs.mkdir()
    ids = {code: nowait(c, "sh", "-c", f"echo $GRUN_NODE >> {runs}/{code}; sleep 9; exit {code}") for code in (3, 4)}
    for i in ids.values():
        wait_state(c, i, "running")
    for name in ("a", "b"):
        c.procs[name].send_signal(signal.SIGSTOP)  # (their jobs run on, under their reapers)
    time.sleep(6)  # twice node_timeout
    for name in ("a", "b"):
        c.procs[name].send_signal(signal.SIGCONT)
    assert [c.grun("-q", "wait", str(i)).returncode for i in ids.values()] == [3, 4]
    records = _once_each(c, list(ids.values()))
    assert all(r["attempt"] == 1 and not r.get("requeues") for r in records.values()), records
    assert all(len((runs / str(code)).read_text().split()) == 1 for code in ids), "each job ran once"
    with open(os.path.join(c.root, "master", "grun.log")) as f:
        log = f.read()
    assert "this master seems cut off from them" in log and " lost (silent" not in log, log


def test_a_master_that_hears_no_node_declares_those_whose_daemons_are_gone_lost(make_cluster):
    """QA: every node daemon killed at once (their hosts up): none was declared lost, the master taking the silence for
    its own cut-off. A host that refuses a connection to its daemon's port proves that daemon gone: lost as usual."""
    c = make_cluster(nodes={n: {"cpus": 1, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    ids = [nowait(c, "sleep", "30") for _ in range(2)]
    for i in ids:
        wait_state(c, i, "running")
    for name in ("a", "b"):
        c.kill(name)
    log = os.path.join(c.root, "master", "grun.log")
    wait_for(lambda: all(f"node {n} lost (silent" in open(log).read() for n in ("a", "b")), 30, what="both lost")
    assert [job(c, i)["state"] for i in ids] == ["queued"] * 2  # (re-queued: no node left to run them)


def test_a_second_daemon_with_a_live_nodes_name_is_refused_and_its_restart_elsewhere_is_not(make_cluster, tmp_path):
    """QA: a second node daemon given n1's hostname: (a copied config, another spool) while n1 ran a job: the master
    re-queued the job and ran it again on the newcomer (and, that one stopped, a third time on n1). It is refused, said
    once in the master's log and in its own, and the job runs once. n1 killed -9, its daemon back at another port (its
    old one refusing connections) is taken at once."""
    c = make_cluster(nodes={"n1": {"cpus": 2, "memory": 1000, **FAST}}, node_timeout=3)
    runs = tmp_path / "runs"
    jid = nowait(c, "sh", "-c", f"echo run >> {runs}; sleep 3")
    wait_state(c, jid, "running")
    copy = c.write_config("copy", {"services": "exec", "count_outside_load": False, "hostname": "n1", "cpus": 2,
                                   "memory": 1000, **FAST})
    said = "refused: its name is served by a live daemon at"
    started = c.grun("-C", copy, "-d")  # (the node side's `grun -d` says the master's refusal, exit 1)
    assert started.returncode == 1 and said in started.stderr.decode(), started.stderr
    copy_log, log = (os.path.join(c.root, name, "grun.log") for name in ("copy", "master"))
    text = lambda path: open(path).read() if os.path.exists(path) else ""
    time.sleep(2)  # (it tries again each second)
    assert text(copy_log).count(said) == 1 and text(log).count(said) == 1
    assert c.grun("-C", copy, "-d", "-k").returncode == 0
    assert c.grun("-q", "wait", str(jid)).returncode == 0 and runs.read_text() == "run\n"
    assert job(c, jid)["attempt"] == 1
    old = c.client().nodes()[0]["uri"]
    c.kill("n1")
    c._spawn("copy", copy)
    wait_for(lambda: [(n["uri"], n["up"]) for n in c.client().nodes()] not in ([(old, True)], [(old, False)]), 20,
             what="n1's new daemon taken")
    assert c.client().nodes()[0]["up"] and said not in text(copy_log).split("registered")[-1]


def test_a_grun_whose_run_ended_after_it_was_re_queued_says_so_and_stops(make_cluster, tmp_path):
    """QA: a run that ended on its own while its node daemon was silent, its job re-queued meanwhile: the `grun`
    following it said nothing (README: it says so) and returned that run's code, not the one of the run that counts.
    (QA, later: nor does it follow the next run once the first's output reached it: 255, test_follow_ends.)"""
    c = make_cluster(nodes={n: {"cpus": 1, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    runs = tmp_path / "runs"
    runs.mkdir()
    follower = c.popen("-v", "sh", "-c", f"if [ -e {runs}/first ]; then sleep 2; echo second; exit 5; fi; "
                                         f"touch {runs}/first; echo first; sleep 5; touch {runs}/ended; exit 3")
    try:
        read_line(follower.stderr, 20)
        jid = job_id_from_verbose(read_line(follower.stderr, 20))
        first = wait_state(c, jid, "running")["node"]
        wait_for(lambda: (runs / "first").exists(), 20, what="the first run")
        c.procs[first].send_signal(signal.SIGSTOP)
        wait_for(lambda: job(c, jid)["attempt"] == 2, 20, what="the job re-queued and placed again")
        wait_for(lambda: (runs / "ended").exists(), 20, what="the first run's end")
        c.procs[first].send_signal(signal.SIGCONT)
        out, err = follower.communicate(timeout=60)
    finally:
        _reap(follower)
    assert follower.returncode == 255 and out == b"first\n", (out, err)
    assert f"job {jid} was re-queued (node {first} lost (silent for".encode() in err, err


def test_a_lost_job_not_run_again_takes_its_real_end_when_its_node_is_back(make_cluster):
    """QA: `grun --norequeue`, its node daemon stopped past node_timeout while the job ran to its end (exit 32): grun
    exited 255 without a word, the master ignored the end the node reported when back, history said `lost 255`."""
    c = make_cluster(nodes={n: {"cpus": 1, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    follower = c.popen("-v", "--norequeue", "-H", "a", "sh", "-c", "echo start; sleep 5; echo end; exit 32")
    try:
        read_line(follower.stderr, 20)
        jid = job_id_from_verbose(read_line(follower.stderr, 20))
        assert read_line(follower.stdout, 20) == b"start\n"
        pid = job_pid(c, jid)
        c.procs["a"].send_signal(signal.SIGSTOP)
        wait_state(c, jid, "lost")
        wait_for(lambda: not _group_alive(pid), 20, what="the job's end")
        c.procs["a"].send_signal(signal.SIGCONT)
        out, err = follower.communicate(timeout=60)
    finally:
        _reap(follower)
    assert out == b"end\n" and follower.returncode == 32, (out, err)  # (the run it followed: heard by the master or not)
    assert f"grun: job {jid} lost: node a lost (silent for".encode() in err, err
    wait_for(lambda: c.grun("-q", "wait", str(jid)).returncode == 32, 20, what="the run's real end")
    wait_for(lambda: _once_each(c, [jid])[jid]["exit"] == 32, 10, what="history to show it")
    record = _once_each(c, [jid])[jid]
    assert record["state"] == "lost" and "its run ended there later: exit 32" in record["error"], record
    with open(os.path.join(c.root, "master", "grun.log")) as f:
        assert f"job {jid}: node a lost (silent for" in f.read()
    c.kill("master", signal.SIGKILL)  # the late end is journaled: the restarted master shows it too (QA: lost 255)
    c.start_master()
    assert c.grun("-q", "wait", str(jid)).returncode == 32
    assert "its run ended there later: exit 32" in job(c, jid)["error"]
    assert _once_each(c, [jid])[jid]["exit"] == 32


def test_a_kill_that_never_reached_a_lost_node_is_not_recorded_as_its_end(make_cluster):
    """QA: `grun -k` of a job whose node was away, declared lost, then back with the job's own end (exit 0): history
    said it was killed by signal 15, a signal no one sent it. Its EXIT is the run's own end (still killed: asked)."""
    c = make_cluster(nodes={n: {"cpus": 1, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    jid = nowait(c, "-H", "a", "sh", "-c", "sleep 5; exit 0")
    pid = job_pid(c, jid)
    c.procs["a"].send_signal(signal.SIGSTOP)
    try:
        assert c.grun("-k", str(jid)).returncode == 0
        dead = wait_state(c, jid, "killed")
        assert (dead.get("signal"), J.describe_exit(dead)) == (None, "-"), dead  # (no signal reached it)
        wait_for(lambda: not _group_alive(pid), 20, what="the job's own end")
    finally:
        c.procs["a"].send_signal(signal.SIGCONT)
    wait_for(lambda: _once_each(c, [jid])[jid]["exit"] == 0, 20, what="history to take its own end")
    record = _once_each(c, [jid])[jid]
    assert (record["state"], J.describe_exit(record), record.get("signal")) == ("killed", "0", None), record
    assert "its run ended there later: exit 0" in record["error"], record


def test_a_one_node_master_stalled_past_node_timeout_does_not_lose_its_own_node():
    """QA: the personal cluster's daemon (master and its only node in one) stopped longer than node_timeout, then
    continued: the master declared its own node lost and the job with it, though it ran on. Its own pause is no
    silence of its nodes: they get a node_timeout from when it runs again."""
    c = LocalCluster(nodes={}, master_extra={"services": "queue,exec", "cpus": 1, "memory": 1000, "node_timeout": 3,
                                             "count_outside_load": False,
                                             **FAST}).start()
    try:
        c.wait_nodes(["master"])
        jid = nowait(c, "--norequeue", "sh", "-c", "sleep 6; exit 7")
        wait_state(c, jid, "running")
        c.procs["master"].send_signal(signal.SIGSTOP)
        time.sleep(4.5)
        c.procs["master"].send_signal(signal.SIGCONT)
        assert c.grun("-q", "wait", str(jid)).returncode == 7
        with open(os.path.join(c.root, "master", "grun.log")) as f:
            log = f.read()
        assert "lost" not in log and "this master stood still for" in log, log
    finally:
        c.procs["master"].send_signal(signal.SIGCONT)
        c.stop()


def test_the_wait_of_a_job_re_queued_is_its_last_runs(make_cluster, tmp_path):
    """QA: a job lost with its node and run again showed a WAIT from its submission to its last start, the lost run
    in it. As sacct's (eligible to start): from its re-queue."""
    c = make_cluster(nodes={n: {"cpus": 1, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    first = tmp_path / "first"
    jid = nowait(c, "sh", "-c", f"[ -e {first} ] && exit 0; touch {first}; sleep 60")
    node = wait_state(c, jid, "running")["node"]
    c.procs[node].send_signal(signal.SIGSTOP)
    try:
        wait_state(c, jid, "done", timeout=30)
    finally:
        c.procs[node].send_signal(signal.SIGCONT)
    record = _once_each(c, [jid])[jid]
    assert record["start_time"] - record["submit_time"] > 3 and record["requeues"] == 1, record
    assert record["queue_wait"] < 2, record


def test_a_node_that_never_returns_after_a_master_restart_still_times_out(make_cluster, tmp_path):
    """The restarted master knows the node only from its journal: it must still declare it lost."""
    c = make_cluster(nodes={"a": {"cpus": 1, "memory": 1000, **FAST}, "b": {"cpus": 1, "memory": 1000, **FAST}},
                     node_timeout=3)
    runs = tmp_path / "runs"
    runs.mkdir()
    # the first run lasts (so its copy is still there to be killed), a second one is quick
    jid = nowait(c, "sh", "-c", f"s=30; [ -e {runs}/job ] && s=0.2; echo $GRUN_NODE >> {runs}/job; sleep $s; exit 8")
    first = wait_state(c, jid, "running")["node"]
    c.procs[first].send_signal(signal.SIGSTOP)
    c.kill("master", signal.SIGKILL)
    c.start_master()
    second = "b" if first == "a" else "a"
    moved = wait_for(lambda: (j := job(c, jid))["state"] == "running" and j["node"] == second and j,
                     20, what="the job to be declared lost and run on the other node")
    assert moved["attempt"] == 2
    c.procs[first].send_signal(signal.SIGCONT)
    assert c.grun("-q", "wait", str(jid)).returncode == 8
    record = _once_each(c, [jid])[jid]
    assert (record["node"], record["attempt"]) == (second, 2)
    job_dir = os.path.join(c.root, first, "node", "jobs", str(jid))  # (its reader may catch it half-written: again)
    end = wait_for(lambda: spool.read(job_dir, spool.STATUS), 15, what="the stale copy to be killed")
    assert end["signal"] == signal.SIGTERM
    assert (runs / "job").read_text() == f"{first}\n{second}\n"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# ---- the protocol, every retried message twice ---------------------------------------------------

def test_every_retried_message_is_safe_twice(make_cluster, tmp_path):
    c = make_cluster(nodes={"n1": {"cpus": 4, "memory": 4000, **FAST}})
    master = registry.proxy(registry.master_uri("127.0.0.1", c.port))
    ran = tmp_path / "ran"
    spec = {"cmd": ["sh", "-c", f"echo x >> {ran}; exit 3"], "token": "twice-1", **AS_US}

    # submit: the same token twice, and again after the job ended, is the same job
    first = master.submit(spec)
    assert master.submit(spec) == first
    assert c.client().wait([first])[first]["exit"] == 3
    assert master.submit(spec) == first
    assert master.submit_many([spec, spec]) == [first, first]

    # start (dispatch offered again): the node runs the job once
    gate = tmp_path / "gate"
    jid = nowait(c, "sh", "-c", f"echo y >> {ran}.2; while [ ! -e {gate} ]; do sleep 0.05; done")
    view = wait_state(c, jid, "running")
    node = registry.proxy(view["node_uri"])
    offer = dict(view, env={})
    for _ in range(2):
        reply = node.start([offer])
        assert reply["started"] == {str(jid): None} and not reply["rejected"]
    gate.touch()
    assert c.grun("-q", "wait", str(jid)).returncode == 0
    assert (tmp_path / "ran.2").read_text() == "y\n"

    # finish: reported twice, applied once (and the real copy, now stale, is killed by its node)
    victim = nowait(c, "sleep", "30")
    wait_state(c, victim, "running")
    pgid = job_pid(c, victim)
    for _ in range(2):
        assert master.finished("n1", [{"id": victim, "exit_code": 7}]) == [victim]
    assert (job(c, victim)["state"], job(c, victim)["exit"]) == ("failed", 7)
    wait_for(lambda: not _group_alive(pgid), 15, what="the copy the master no longer counts to be killed")

    # kill: twice for a running job and for a queued one; each ends once, killed
    running = nowait(c, "sleep", "30")
    queued = nowait(c, "-c", "4", "true")  # no room until `running` ends... and it never gets it
    wait_state(c, running, "running")
    for _ in range(2):
        master.kill([running, queued], 15)
    done = c.client().wait([running, queued])
    assert (done[running]["state"], done[running]["exit"]) == ("killed", 143)
    assert done[queued]["state"] == "killed"
    records = _once_each(c, [first, jid, victim, running, queued])
    assert records[victim]["exit"] == 7
    assert ran.read_text() == "x\n"


# ---- disk trouble ------------------------------------------------------------------------------

def _mount_tmpfs(path: str, size_mb: int) -> bool:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=755", "tmpfs", path], capture_output=True)
    return r.returncode == 0


def test_a_nearly_full_disk_refuses_submissions_and_keeps_running_jobs(make_cluster):
    c = make_cluster(start=False, min_free_disk=8)
    master_spool = os.path.join(c.root, "master")
    mounted = _mount_tmpfs(master_spool, 16)
    try:
        c.start()
        gate = os.path.join(c.root, "gate")
        running = nowait(c, "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 2")
        wait_state(c, running, "running")
        if mounted:
            ballast = os.path.join(master_spool, "ballast")
            with open(ballast, "wb") as f:
                f.write(b"\0" * (10 << 20))  # 6 MB left of 16: below min_free_disk
        else:  # no tmpfs here: a threshold above what this disk has free, by reload
            free = shutil.disk_usage(master_spool).free >> 20
            with open(c.configs["master"], "a") as f:
                f.write(f"min_free_disk: {free + 100000}\n")
            c.procs["master"].send_signal(signal.SIGHUP)
        time.sleep(1.2)  # the free-space figure is at most a second old
        r = c.grun("--nowait", "true")
        assert r.returncode == 1 and r.stdout == b""
        assert re.fullmatch(rb"grun: the grun master's disk is nearly full \(\d+ MB free in \S+, "
                            rb"min_free_disk is \d+ MB\): not accepting new jobs\n", r.stderr), r.stderr
        with open(os.path.join(c.root, "master", "grun.log")) as f:
            assert "refusing submissions" in f.read()
        open(gate, "w").close()  # the running job goes on and its end is recorded
        assert c.grun("-q", "wait", str(running)).returncode == 2
        if mounted:
            os.unlink(ballast)
            time.sleep(1.2)
            assert c.grun("sh", "-c", "exit 5").returncode == 5
        _once_each(c, [running])
    finally:
        c.stop()
        if mounted:
            subprocess.run(["umount", "-l", master_spool], check=False)


def test_torn_journal_tail_and_corrupt_snapshot_through_the_master(make_cluster):
    c = make_cluster()
    state = os.path.join(c.root, "master", "master")
    codes = {}
    for round_ in range(2):  # two graceful stops: two snapshots
        for k in range(3):
            jid = nowait(c, "sh", "-c", f"exit {10 * round_ + k}")
            codes[jid] = 10 * round_ + k
        c.client().wait(list(codes))
        c.kill("master", signal.SIGTERM)
        c.start_master()
    late = nowait(c, "sh", "-c", "exit 33")
    codes[late] = 33
    c.client().wait([late])
    c.kill("master", signal.SIGKILL)
    snaps = sorted((f for f in os.listdir(state) if re.fullmatch(r"snapshot\.\d+\.json", f)),
                   key=lambda f: int(f.split(".")[1]))
    assert len(snaps) == 2
    newest = os.path.join(state, snaps[-1])
    with open(newest, "r+b") as f:  # power loss in the middle of writing it
        f.truncate(os.path.getsize(newest) // 2)
    segments = sorted((f for f in os.listdir(state) if f.startswith("journal.")), key=lambda f: int(f.split(".")[1]))
    with open(os.path.join(state, segments[-1]), "ab") as f:
        f.write(b'{"seq":999999,"op":"subm')  # a torn last write
    c.start_master()
    # (the late job's end may not have been on disk yet: its node reports it again)
    assert {i: r["exit"] for i, r in c.client().wait(list(codes)).items()} == codes
    _once_each(c, codes)
    with open(os.path.join(c.root, "master", "grun.log")) as f:
        log = f.read()
    assert "skipping torn last line" in log and "unreadable" in log and "falling back" in log
    assert c.grun("sh", "-c", "exit 44").returncode == 44
    assert nowait(c, "true") > max(codes)  # ids are not reused


# ---- graceful restart and reload ------------------------------------------------------------------

def _daemon_pid(c) -> int:
    with open(os.path.join(c.root, "master", "grun.pid")) as f:
        return int(f.read())


def test_graceful_restart_and_reload_with_clients_in_flight(make_cluster, tmp_path):
    c = make_cluster(nodes={"n1": {"cpus": 2, "memory": 4000, **FAST}})
    old_pid = _daemon_pid(c)
    blocking = [c.popen("sh", "-c", f"echo run-{k}; sleep 2; exit {k}") for k in range(3)]  # one queues
    assert read_line(blocking[0].stdout, 20) == b"run-0\n"
    submitted, slowest, errors = [], [0.0], []
    stop = threading.Event()

    def submit_loop():
        client = c.client()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                submitted.append(client.submit_spec({"cmd": ["true"], "cwd": "/"}))
            except Exception as exc:
                errors.append(exc)
            slowest[0] = max(slowest[0], time.monotonic() - t0)
            time.sleep(0.02)

    loop = threading.Thread(target=submit_loop)
    loop.start()
    try:
        time.sleep(0.5)
        r = c.grun("-d", "-R", "-C", c.configs["master"])
        assert r.returncode == 0, r.stderr
        assert re.fullmatch(rb"grun: restarted services queue \(pid %d -> (\d+)\)\n" % old_pid, r.stderr), r.stderr
        time.sleep(1)
    finally:
        stop.set()
        loop.join(60)
    new_pid = _daemon_pid(c)
    try:
        assert new_pid != old_pid and c.procs["master"].wait(10) == 0  # the old one left cleanly
        for k, proc in enumerate(blocking):
            out, err = proc.communicate(timeout=60)
            assert (proc.returncode, out) == (k, f"run-{k}\n".encode() if k else b""), err  # run-0 read above
        assert not errors, errors
        assert slowest[0] < 8, f"a submission waited {slowest[0]:.1f} s"
        assert len(submitted) > 10 and len(set(submitted)) == len(submitted)
        c.client().wait(submitted)
        _once_each(c, submitted)

        # reload without restart: a key that needs no restart applies at once, in the same process
        with open(c.configs["master"], "a") as f:
            f.write("min_free_disk: 1000000000\n")
        r = c.grun("-d", "-r", "-C", c.configs["master"])
        assert r.returncode == 0 and b"reload" in r.stderr, r.stderr
        wait_for(lambda: c.grun("--nowait", "true").returncode == 1, 10, what="the reloaded threshold")
        assert _daemon_pid(c) == new_pid
        with open(os.path.join(c.root, "master", "grun.log")) as f:
            assert "reloaded" in f.read()
    finally:
        _reap(*blocking)
        os.kill(new_pid, signal.SIGTERM)
        wait_for(lambda: not _pid_alive(new_pid), 20, what="the restarted master to stop")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_job_killed_while_re_queued_is_said_so_not_followed_on_no_node(make_cluster):
    """QA: `grun` followed a job killed while re-queued (its node lost) as "attempt 1 on None", then "killed on -"."""
    c = make_cluster(nodes={n: {"cpus": 1, "memory": 1000, **FAST} for n in ("a", "b")}, node_timeout=3)
    follower = c.popen("-v", "-H", "a", "sh", "-c", "echo started; sleep 60")
    try:
        jid = job_id_from_verbose(read_line(follower.stderr, 20))
        assert read_line(follower.stdout, 20) == b"started\n"
        c.procs["a"].send_signal(signal.SIGSTOP)
        wait_for(lambda: job(c, jid)["state"] == "queued", 20, what="the job re-queued")
        assert c.grun("-k", str(jid)).returncode == 0
        c.procs["a"].send_signal(signal.SIGCONT)  # back: its stale copy is killed, and the follower hears of it
        out, err = follower.communicate(timeout=60)
    finally:
        c.procs["a"].send_signal(signal.SIGCONT)
        _reap(follower)
    assert follower.returncode == job(c, jid)["exit"] == 143 and out == b"", (out, err)  # ("started": read above)
    lines = err.decode().splitlines()  # not "following attempt 1 on None", nor "job 1 killed on -"
    assert len(lines) == 2 and lines[0] == f"grun: job {jid} running on a", err
    assert re.fullmatch(rf"grun: job {jid} was re-queued \(node a lost \(silent for \d+ s\)\); it was killed before "
                        r"its next attempt", lines[1]), err
