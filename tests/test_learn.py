"""Learned requests through real daemons (issue 11 points 1, 2 and 4): after a few runs of a program a job
that gives no -m/-c/-t gets their p95, marked `*` in `grun -q jobs` and explained by `grun why`; the
estimates survive a master killed (journal replay) and one stopped (snapshot) without counting a run twice;
a -m far above what the program used is warned of; the learned memory's limit (estimate x
learn_memory_factor) kills a run far over it, and a reload with the factor off lets it run; runs that keep
ending near their limit are warned of in the master's log and at the next submit; a learned run time is
never a limit."""
from __future__ import annotations

import getpass
import os
import signal
import sys

import pytest
from cluster import LocalCluster
from util import job_id_from_verbose, nowait, wait_for

HOG = "import sys, time\nx = b'y' * (int(sys.argv[1]) << 20)\ntime.sleep(float(sys.argv[2]))\n"
USER = getpass.getuser()


@pytest.fixture(scope="module")
def lc():
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000}}) as c:
        yield c


def _script(c: LocalCluster, name: str) -> str:
    path = os.path.join(c.root, name)
    with open(path, "w") as f:
        f.write(HOG)
    return path


def _runs(c: LocalCluster, n: int, *args: str) -> None:
    for _ in range(n):
        r = c.grun(*args)
        assert r.returncode == 0, r.stderr


def _row(c: LocalCluster, job_id: int) -> dict:
    header, *rows = c.grun("-q", "jobs").stdout.decode().splitlines()
    return dict(zip(header.split(), next(r.split() for r in rows if r.split()[0] == str(job_id))))


def test_an_estimate_after_three_runs_is_marked_and_survives_master_restarts(lc):
    hog = _script(lc, "hog.py")
    _runs(lc, 2, sys.executable, hog, "60", "0")
    first = nowait(lc, sys.executable, hog, "60", "30")
    assert "origin" not in lc.client().job(first) and _row(lc, first)["MEM"] == "100", "two runs: the default"
    lc.client().kill([first], 9)
    _runs(lc, 1, sys.executable, hog, "60", "1")  # (runs under 1 s teach no cpus: learn.MIN_CPU_WALL)
    job_id = nowait(lc, sys.executable, hog, "60", "30")
    row, job = _row(lc, job_id), lc.client().job(job_id)
    assert row["MEM"].endswith("*") and 60 < int(row["MEM"][:-1]) < 120 and row["MEM"] == f"{job['memory']}*", row
    assert row["CPUS"].endswith("*") and row["TIME"].endswith("*") and "time" not in job, (row, job)
    learned = f"learned: p95 of the last 3 runs of hog.py by {USER}"
    assert job["origin"]["memory"] == learned and job["memory_limit"] == job["memory"] * 4
    why = lc.grun("why", str(job_id)).stdout.decode()
    assert f"memory from {learned}" in why, why
    assert f"origin    memory from {learned}" in lc.grun("-q", "jobs", "--long").stdout.decode()
    lc.client().kill([job_id], 9)  # killed by a person: says nothing of what it needs, not counted
    wait_for(lambda: lc.client().job(job_id)["state"] == "killed", 20, what="the kill")
    for stop in (signal.SIGKILL, signal.SIGTERM):  # journal replay; snapshot
        lc.kill("master", stop)
        lc.start_master()
        again = nowait(lc, "--force", "-c", "64", sys.executable, hog, "60", "0")
        assert lc.client().job(again)["origin"]["memory"] == learned, f"after a master stopped with {stop!r}"
        lc.client().kill([again], 9)
    long = lc.grun("-q", "history", "--long", "-c", "1").stdout.decode()
    assert f"origin    memory from {learned}" in long, long
    queued = nowait(lc, "--force", "-c", "64", sys.executable, hog, "60", "0")
    assert lc.grun("-e", "memory=200M", str(queued)).returncode == 0  # an edit's value is no longer learned
    assert _row(lc, queued)["MEM"] == "200" and "memory from" not in lc.grun("why", str(queued)).stdout.decode()
    lc.client().kill([queued], 9)


def test_a_request_far_above_what_the_program_used_is_warned_of(lc):
    far = _script(lc, "far.py")
    _runs(lc, 3, sys.executable, far, "20", "0")
    r = lc.grun("-v", "-m", "2G", sys.executable, far, "20", "0")
    job = lc.client().job(job_id_from_verbose(r.stderr))
    [warning] = job["warnings"]
    assert warning.startswith(f"-m 2.0G, but the last 3 runs of far.py by {USER} peaked at ") and "memory" not in \
        job.get("origin", {}), job
    assert f"Warning: {warning}." in lc.grun("why", str(job["id"])).stdout.decode()
    r = lc.grun("-v", "-m", "200", sys.executable, far, "20", "0")
    assert "warnings" not in lc.client().job(job_id_from_verbose(r.stderr))


def test_a_pipeline_is_keyed_by_all_its_programs_not_its_first(lc):
    """(QA: `grun "cat nums.txt | python3 -c BIG"` got the memory learned from `grun cat` runs, 12 MB, and was killed
    at 48 MB, learned x learn_memory_factor.)"""
    nums = os.path.join(lc.root, "nums.txt")
    with open(nums, "w") as f:
        f.write("200\n")
    _runs(lc, 3, "cat", nums)
    code = 'import time; x = b"y" * (int(input()) << 20); time.sleep(1)'
    line = f"cat {nums} | {sys.executable} -c '{code}'"
    r = lc.grun("-v", line)
    job = lc.client().job(job_id_from_verbose(r.stderr))
    assert r.returncode == 0 and "origin" not in job, (r.stderr, job)
    _runs(lc, 2, line)
    job_id = nowait(lc, "--force", "-c", "64", line)
    key = f"cat|{os.path.basename(sys.executable)} -c {code[:40]!r}"  # (not cat's: its origin names this key)
    assert _row(lc, job_id)["MEM"].endswith("*"), "three runs: learned"
    assert f"origin    memory from learned: p95 of the last 3 runs of {key} by {USER}" in \
        lc.grun("-q", "jobs", "--long").stdout.decode()
    lc.client().kill([job_id], 9)


def test_the_learned_memory_limit_kills_far_over_it_and_a_reload_turns_it_off(lc):
    grow = _script(lc, "grow.py")
    _runs(lc, 3, sys.executable, grow, "20", "0")
    r = lc.grun("-v", "--err", os.path.join(lc.root, "grow.err"), sys.executable, grow, "600", "4")
    job = killed = lc.client().job(job_id_from_verbose(r.stderr))
    assert r.returncode == 137 and (job["state"], job["limit"]) == ("killed", "memory"), (r.stderr, job)
    assert f"limit {job['memory_limit']} MB = learned {job['memory']} MB x learn_memory_factor" in \
        r.stderr.decode().splitlines()[-1], r.stderr
    with open(os.path.join(lc.root, "grow.err")) as f:  # the job's own stderr says it too (else empty)
        assert f.read() == r.stderr.decode().splitlines()[-1] + "\n"
    log = os.path.join(lc.root, "master", "grun.log")
    lc.write_config("master", {"services": "queue", "learn_memory_factor": "off"})
    lc.procs["master"].send_signal(signal.SIGHUP)
    wait_for(lambda: "learn_memory_factor: 0" in open(log).read(), 20, what="the reload")
    r = lc.grun("-v", sys.executable, grow, "600", "3")
    job = lc.client().job(job_id_from_verbose(r.stderr))
    assert r.returncode == 0 and "memory_limit" not in job and "memory_mb" not in job["limits"], (r.stderr, job)
    assert job["origin"]["memory"].startswith("learned: p95 of the last 3 runs of grow.py") and \
        job["memory"] >= killed["memory_limit"], "a kill adds only its peak, at least its limit: it needed more"


def test_runs_that_keep_ending_near_their_limit_are_warned_of(lc):
    _runs(lc, 3, "-t", "2s", "sleep", "1.9")
    wait_for(lambda: "used 90 % or more of their time limit of 2 s" in
             open(os.path.join(lc.root, "master", "grun.log")).read(), 20, what="the master's warning")
    job = lc.client().job(nowait(lc, "--force", "-c", "64", "-t", "2s", "sleep", "1.9"))
    assert job["warnings"] == [f"the last 3 runs of sleep 1.9 by {USER} used 90 % or more of their time limit of 2 s"]
    lc.client().kill([job["id"]], 9)


def test_a_learned_run_time_is_an_estimate_never_a_limit(lc):
    nap = os.path.join(lc.root, "nap.sh")
    with open(nap, "w") as f:
        f.write('sleep "$1"\n')
    _runs(lc, 3, "sh", nap, "0.2")
    r = lc.grun("-v", "sh", nap, "2")
    job = lc.client().job(job_id_from_verbose(r.stderr))
    assert job["origin"]["time"].startswith("learned") and job["expected_time"] < 1, job
    assert r.returncode == 0 and job["state"] == "done" and "time" not in job["limits"], (r.stderr, job)


def test_a_queued_jobs_learned_request_no_node_fits_any_more_gives_way_to_the_defaults_and_says_so():
    """(QA: a job held with a learned 300 MB, both nodes cut to 250 MB by a reload, then resumed, stayed queued for
    ever, `grun why`: "No node up now could ever run it"; and nothing said why a request fell back to the defaults.)"""
    with LocalCluster({"n1": {"cpus": 1, "memory": 4000}, "n2": {"cpus": 1, "memory": 4000}}) as c:
        hog = _script(c, "hog.py")
        _runs(c, 3, sys.executable, hog, "300", "0")
        job_id = nowait(c, "--hold", sys.executable, hog, "10", "0")
        assert c.client().job(job_id)["memory"] > 300
        for node in ("n1", "n2"):
            conf = c.write_config(node, {"services": "exec", "count_outside_load": False, "cpus": 1, "memory": 250})
            assert c.grun("-C", conf, "-d", "-r").returncode == 0
        wait_for(lambda: {n["name"]: n["memory"] for n in c.client().nodes()} == {"n1": 250, "n2": 250}, 20,
                 what="both nodes cut to 250 MB")
        job = wait_for(lambda: (j := c.client().job(job_id))["memory"] == 100 and j, 20, what="the defaults")
        [warning] = job["warnings"]
        assert warning.startswith("its learned request (") and not job.get("origin") and f"p95 of the last 3 runs of " \
            f"hog.py by {USER}) was dropped for the defaults: no node has " in warning and warning.endswith(
                "of memory; largest is 250 MB"), job
        assert f"Warning: {warning}." in c.grun("why", str(job_id)).stdout.decode()
        assert c.grun("-e", "resume", str(job_id)).returncode == 0
        wait_for(lambda: c.client().job(job_id)["state"] == "done", 30, what="the job to run")
        assert f"  warning   {warning}" in c.grun("-q", "history", "--long", "-c", "1").stdout.decode()
