"""Resources and placement on real clusters (issue 4, points 1-6): custom resources and labels, defaults
from config, outside load, best fit, refusal of the impossible and `why`, priorities with reservation
and backfill, and a real nested grun. Three nodes of different sizes; every test leaves them idle."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest
from cluster import LocalCluster
from util import assert_one_error_line, job, nowait, wait_for, wait_state

PY = sys.executable
NODES = {"big": {"cpus": 4, "memory": 8000, "resources": {"gpu": 2}, "labels": {"os": "debian12"}},
         "mid": {"cpus": 2, "memory": 4000, "resources": {"scratch_gb": 100}, "labels": {"os": "debian12"}},
         "small": {"cpus": 1, "memory": 2000, "labels": {"os": "debian11", "arch": "x86_64"}}}


def _start(nodes, **master) -> LocalCluster:
    c = LocalCluster(nodes, master_extra=master)
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def three():
    c = _start(NODES, default_cpus=0.5, default_memory=64)
    yield c
    c.stop()


def _node_of(cluster, *args) -> str:
    r = cluster.grun(*args, "printenv", "GRUN_NODE")
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


def _free(cluster, name) -> tuple:
    node = next(n for n in cluster.client().nodes() if n["name"] == name)
    return node["free_cpus"], node["free_memory"]


def _kill(cluster, *ids):
    cluster.client().kill(list(ids), 9)
    for i in ids:
        wait_state(cluster, i, "killed", "done", "failed")


# ---- 1. requests: -c, -m, -p NAME=VALUE, -H; defaults from config ------------------------------

def test_labels_consumables_and_hosts_choose_the_node(three):
    assert _node_of(three, "-p", "gpu=1") == "big"
    assert _node_of(three, "-p", "os=debian11") == "small"
    assert _node_of(three, "-p", "arch=x86*") == "small", "globs match labels"
    assert _node_of(three, "-p", "scratch_gb=50") == "mid"
    assert _node_of(three, "-p", "os=debian12", "-c", "2", "-m", "3000") in ("big", "mid")
    assert _node_of(three, "-p", "os=debian12", "-p", "gpu=2", "-H", "b*") == "big"
    assert _node_of(three, "-c", "0.25", "-H", "small,mid", "-p", "os=debian12") == "mid"


def test_consumables_are_reserved_while_jobs_run(three):
    a = nowait(three, "-p", "gpu=1", "sleep", "30")
    b = nowait(three, "-p", "gpu=1", "sleep", "30")
    c = nowait(three, "-p", "gpu=1", "true")
    try:
        wait_state(three, a, "running")
        wait_state(three, b, "running")
        assert job(three, c)["state"] == "queued", "a third gpu job ran on a node with 2 gpus"
        text = three.grun("why", str(c)).stdout.decode()
        assert "0 of 2 gpu free" in text and "big" in text, text
    finally:
        _kill(three, a, b)
    assert three.grun("-q", "wait", str(c)).returncode == 0
    assert job(three, c)["node"] == "big"


def test_defaults_for_unset_requests_come_from_config(three):
    job_id = nowait(three, "true")
    record = job(three, job_id)
    assert (record["cpus"], record["memory"], record["priority"]) == (0.5, 64, 20)
    three.grun("-q", "wait", str(job_id))


# ---- 2. outside load ---------------------------------------------------------------------------

def _node(cluster, name) -> dict:
    return next(n for n in cluster.client().nodes() if n["name"] == name)


@pytest.mark.alone  # measures stalls or load: the other test worker would be in it
def test_outside_load_lowers_free_cpus_and_grun_jobs_are_not_outside_load(tmp_path):
    """Other sessions may share this machine, so the first half checks what the node excluded
    (the job's own cpu use) and that free = total - reserved - outside; the second half saturates
    every core from outside grun, which fills the node whatever else runs. Outside load is charged only
    beyond what the config leaves unoffered: "busy" offers the whole machine, "small" a sliver of it."""
    cores, total_mb = os.cpu_count() or 2, psutil.virtual_memory().total // 2**20
    c = _start({"busy": {"cpus": cores, "memory": total_mb, "count_outside_load": True},
                "small": {"cpus": 1, "memory": 100, "count_outside_load": True}})
    burners = []
    try:
        burn = nowait(c, "-H", "busy", "-c", "1", PY, "-c", "while True: pass")
        wait_state(c, burn, "running")
        wait_for(lambda: (u := job(c, burn).get("usage_now")) and u.get("cpu", 0) > 0.5, 15,
                 what="the node to sample the burning job")
        node = wait_for(lambda: (n := _node(c, "busy")).get("grun_cpus", 0) > 0.5 and n, 15,
                        what="the job's cpu to be counted as grun's, not outside load")
        assert node["free_cpus"] == max(0.0, cores - 1 - node["outside_cpus"]), node
        assert _node(c, "small")["outside_memory"] == 0, "others' memory comes out of what small does not offer"
        c.client().kill([burn], 9)
        # processes outside grun busy on every core: the node is full
        burners = [subprocess.Popen([PY, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        # outside load is sampled, so on a machine shared with other busy sessions one sample can
        # dip; the node must hold the job back on at least one of two tries
        for attempt in range(2):
            wait_for(lambda: _free(c, "busy")[0] == 0, 15, what="outside load to fill the node")
            waiting = nowait(c, "-H", "busy", "-c", "1", "true")
            if job(c, waiting)["state"] == "queued":
                break
        assert job(c, waiting)["state"] == "queued"
        text = c.grun("why", str(waiting)).stdout.decode()
        assert "taken by other programs" in text, text
        node = _node(c, "busy")
        assert node["outside_memory"] > 0 and node["free_memory"] == total_mb - node["outside_memory"], node
        for p in burners:
            p.kill()
        assert c.grun("-q", "wait", str(waiting)).returncode == 0
    finally:
        for p in burners:
            p.kill()
            p.wait()
        c.stop()


# ---- 3. best fit -------------------------------------------------------------------------------

def test_best_fit_fills_one_machine_at_a_time(three):
    ids = [nowait(three, "-c", "1", "sleep", "30") for _ in range(4)]
    try:
        nodes = [wait_state(three, i, "running")["node"] for i in ids]
        assert nodes == ["small", "mid", "mid", "big"], nodes
    finally:
        _kill(three, *ids)


# ---- 4. impossible requests are refused; why ------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["-c", "64"], "no node has 64 cpus; largest is 4"),
    (["-m", "100G"], "no node has 102400 MB of memory; largest is 8000 MB"),
    (["-p", "gpu=3"], "no node has 3 gpu; largest is 2"),
    (["-p", "tpu=1"], "no node has tpu"),
    (["-p", "os=centos7"], "no node has os=centos7"),
    (["-H", "gpu*"], "no node matches hosts 'gpu*'"),
    (["-H", "small", "-c", "2"], "of the nodes in hosts 'small', none has 2 cpus; largest is 1"),
])
def test_impossible_requests_are_refused_at_submit(three, args, message):
    r = three.grun(*args, "true")
    line = assert_one_error_line(r, message, "--force")
    assert r.returncode == 1 and r.stdout == b"", line


def test_force_queues_it_and_why_explains(three):
    job_id = nowait(three, "--force", "-c", "8", "true")
    try:
        for args in (["why", str(job_id)], ["-q", "why", str(job_id)]):
            r = three.grun(*args)
            text = r.stdout.decode()
            assert r.returncode == 0 and len(text.strip().splitlines()) == 1, text
            assert "needs 8 cpus" in text and "3 nodes too small" in text and "could ever run it" in text, text
        blocker = nowait(three, "-H", "small", "-c", "1", "sleep", "30")
        waiting = nowait(three, "-H", "small", "-c", "1", "-r", "25", "true")
        wait_state(three, blocker, "running")
        text = three.grun("why", str(waiting)).stdout.decode()
        assert "busy now: small (0 of 1 cpu" in text.replace("cpus", "cpu") and "running job" in text, text
        assert "excluded" in text and "number 1 of 2" in text, text
        assert three.grun("-k", str(blocker)).returncode == 0
        assert three.grun("-q", "wait", str(waiting)).returncode == 0
        assert "has finished: done" in three.grun("why", str(waiting)).stdout.decode()
    finally:
        three.client().kill([job_id], 9)
    r = three.grun("why", "999999")
    assert_one_error_line(r, "999999")


# ---- 5. priorities, reservation and backfill -----------------------------------------------------

def test_priorities_env_and_config_default(tmp_path):
    c = _start({"a": {"cpus": 2, "memory": 4000}}, default_priority=15)
    try:
        blocker = nowait(c, "-c", "2", "sleep", "30")
        wait_state(c, blocker, "running")
        env = dict(c.env, GRUN_PRIORITY="25")
        low = nowait(c, "-c", "2", "-r", "10", "true")
        default = nowait(c, "-c", "2", "true")
        r = c.grun("--nowait", "-c", "2", "true", env=env)
        from_env = int(r.stdout.split()[-1])
        high = nowait(c, "-c", "2", "-r", "30", "true")
        same = nowait(c, "-c", "2", "-r", "30", "true")
        assert [job(c, i)["priority"] for i in (low, default, from_env, high)] == [10, 15, 25, 30]
        c.client().kill([blocker], 9)
        assert c.grun("-q", "wait", str(low)).returncode == 0
        order = sorted((low, default, from_env, high, same), key=lambda i: job(c, i)["dispatch_time"])
        assert order == [high, same, from_env, default, low]
    finally:
        c.stop()


def _specs(n, *cmd, **request) -> list[dict]:
    return [{"cmd": list(cmd), "cwd": "/", "uid": os.getuid(), "gid": os.getgid(), **request} for _ in range(n)]


def test_fair_share_another_users_job_passes_a_flood_at_the_same_priority():
    """root floods a 2-cpu node with 20 one-second jobs; nobody's one job, submitted after them all, starts as soon
    as a cpu frees (nobody holds none, root all), not after root's 20 (first come, first served)."""
    c = _start({"a": {"cpus": 2, "memory": 4000}})
    try:
        client = c.client()
        flood = client.submit_many(_specs(20, "sleep", "1", cpus=1, user="root"))  # (auth: none: as it claims)
        wait_state(c, flood[0], "running")
        other = client.submit_spec({"cmd": ["true"], "cwd": "/", "user": "nobody", "uid": 65534, "gid": 65534})
        started = wait_state(c, other, "done")["dispatch_time"]
        before = [i for i in flood if job(c, i).get("dispatch_time", 1e18) < started]
        assert len(before) <= 4, f"nobody's job waited for {len(before)} of root's 20"
        client.kill(flood, 9)
    finally:
        c.stop()


def test_a_starving_big_job_gets_a_node_reserved_and_small_ones_backfill_elsewhere():
    """a (2 cpus) is the only node the big job fits; a stream of 1-cpu jobs would keep one of its
    cpus busy for as long as the stream lasts. After reserve_after, a is reserved: the stream goes on
    on b (backfill) and a runs the big job as soon as its current jobs end."""
    c = _start({"a": {"cpus": 2, "memory": 4000}, "b": {"cpus": 1, "memory": 4000}}, reserve_after=1.0)
    try:
        client = c.client()
        first = client.submit_many(_specs(2, "sleep", "3", cpus=1, host="a") + _specs(1, "sleep", "1", cpus=1, host="b"))
        for i in first:
            wait_state(c, i, "running")
        big = client.submit_spec(_specs(1, "echo", "big", cpus=2, priority=30)[0])
        stream = client.submit_many(_specs(12, "sleep", "1", cpus=1))
        reserved = wait_for(lambda: job(c, big).get("reserved_time"), 20, what="a reservation for the big job")
        text = c.grun("why", str(big)).stdout.decode()
        assert "Node a is reserved for it" in text or job(c, big)["state"] != "queued", text
        assert c.grun("-q", "wait", str(big)).returncode == 0
        record = job(c, big)
        assert record["node"] == "a" and record["dispatch_time"] > reserved
        later = [job(c, i) for i in stream]
        after_big = [s for s in later if s.get("dispatch_time", 1e18) > record["dispatch_time"]]
        assert len(after_big) >= 6, "the big job waited for the stream of small jobs"
        # (the pass that makes the reservation may also place a small job on b: same time)
        backfilled = [s for s in later if reserved <= s.get("dispatch_time", 0) < record["dispatch_time"]]
        assert backfilled and {s["node"] for s in backfilled} == {"b"}, backfilled
        assert c.grun("-q", "wait", *map(str, stream)).returncode == 0
    finally:
        c.stop()


def test_easy_backfill_runs_a_short_job_on_the_reserved_node_and_not_a_long_one():
    """a (2 cpus) runs a job with -t 30s; the big job (2 cpus) reserves a. A 1-cpu job of -t 5s ends before
    the running one's limit, so it runs on a now; one of -t 5m, or with no -t, would delay the big job."""
    c = _start({"a": {"cpus": 2, "memory": 4000}}, reserve_after=1.0)
    try:
        running = nowait(c, "-c", "1", "-t", "30s", "sleep", "30")
        wait_state(c, running, "running")
        big = nowait(c, "-c", "2", "-r", "30", "echo", "big")
        wait_for(lambda: job(c, big).get("reserved_node") == "a", 20, what="a reservation for the big job")
        long_, unknown = nowait(c, "-c", "1", "-t", "5m", "true"), nowait(c, "-c", "1", "true")
        short = nowait(c, "-c", "1", "-t", "5s", "echo", "short")
        assert c.grun("-q", "wait", str(short)).returncode == 0 and job(c, short)["node"] == "a"
        assert job(c, long_)["state"] == job(c, unknown)["state"] == job(c, big)["state"] == "queued"
        assert "reserved for job" in c.grun("why", str(long_)).stdout.decode()
    finally:
        c.stop()


def test_easy_backfill_counts_a_suspended_jobs_cpus_free_already():
    """On a (4 cpus) a job of -t 5m runs and one of -t 60s is suspended (its 2 cpus lent): the big job (4 cpus)
    could start when the running one ends, not the suspended one, so a 2-cpu job of -t 2m backfills now."""
    c = _start({"a": {"cpus": 4, "memory": 4000}}, reserve_after=1.0)
    try:
        running, stopped = nowait(c, "-c", "2", "-t", "5m", "sleep", "300"), nowait(c, "-c", "2", "-t", "60s", "sleep", "60")
        wait_state(c, running, "running")
        wait_state(c, stopped, "running")
        assert c.grun("-e", "hold", str(stopped)).returncode == 0
        wait_state(c, stopped, "suspended")
        big = nowait(c, "-c", "4", "-r", "30", "echo", "big")
        wait_for(lambda: job(c, big).get("reserved_node") == "a", 20, what="a reservation for the big job")
        short = nowait(c, "-c", "2", "-t", "2m", "true")
        assert wait_state(c, short, "done")["node"] == "a" and job(c, big)["state"] == "queued"
        _kill(c, running, stopped, big)
    finally:
        c.stop()


# ---- 6. nested grun ----------------------------------------------------------------------------

def test_nested_grun_lends_the_parents_reservation(three, tmp_path):
    """The parent holds all of mid; its child asks for all of mid too: it can only run there because
    the parent lends its reservation while the child runs, and takes it back afterwards."""
    marks = tmp_path / "marks"
    child = f"{PY} -m grun.cli -H mid -c 2 -m 3500 sh -c 'echo child on $GRUN_NODE; sleep 2'"
    script = f"{child}; echo child exit $?; touch {marks}; sleep 3; echo parent done"
    proc = three.popen("-v", "-H", "mid", "-c", "2", "-m", "3000", "sh", "-c", script)
    try:
        wait_for(lambda: len(three.client().jobs()) == 2, 30, what="the child job")
        parent, kid = sorted(three.client().jobs(), key=lambda j: j["id"])
        assert kid["parent"] == parent["id"]
        running = wait_state(three, kid["id"], "running")
        assert running["node"] == "mid"
        assert job(three, parent["id"])["lent_to"] == [kid["id"]]
        assert _free(three, "mid") == (0, 500), "the child holds mid while it runs, the parent nothing"
        wait_for(marks.exists, 30, what="the child to end")
        wait_for(lambda: "lent_to" not in job(three, parent["id"]), 10, what="the parent to take it back")
        assert _free(three, "mid") == (0, 1000), "the parent holds its reservation again"
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.decode() == "child on mid\nchild exit 0\nparent done\n"
    lines = [json.loads(l) for name in sorted(os.listdir(os.path.join(three.root, "master", "master")))
             if name.startswith("journal") for l in open(os.path.join(three.root, "master", "master", name))]
    ops = [(r.get("op"), r.get("id"), r.get("child")) for r in lines if r.get("op") in ("lend", "unlend")]
    assert ops == [("lend", parent["id"], kid["id"]), ("unlend", parent["id"], kid["id"])], ops
