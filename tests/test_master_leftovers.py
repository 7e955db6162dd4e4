"""The master's jobs past its `recent` (the last 2,000 finished, kept whole): ended jobs older than that are the
history files', and each verb and query must treat them as ended jobs all the same, and as fast."""

import inspect
import re
import threading
import time

import pytest
from cluster import LocalCluster

from grun.client import JOBS_PAGE, job_spec
from grun.core import master_state as MS

FILES = 4  # history files of old jobs (2,000 each, grun.store's rotation): more than the 2 it keeps read


@pytest.fixture(scope="module")
def old():
    """A master only, with 8,000 jobs queued held and killed (batches: no run) and 1,000 more (`echo dep`) killed while
    each waited for one of those, spread over 4 history files: (the old jobs' ids, the waiting ones')."""
    c = LocalCluster(nodes={}).start()
    client = c.client()
    held = [i for _ in range(FILES) for i in client.submit_many([job_spec("true", hold=True)] * 2000)]
    waiting = client.submit_many([job_spec("echo dep", hold=True, after=[held[k % FILES * 1500 + k]])
                                  for k in range(1000)])
    client.kill(waiting)  # (first: each keeps its dependency, still live then)
    for i in range(0, len(held), 1000):
        client.kill(held[i:i + 1000])
    assert len(held) - MS.RECENT_FINISHED > 1000
    yield c, held, waiting
    c.stop()


def test_verbs_on_a_job_past_recent_say_it_ended_as_for_a_recent_one(old):
    c, held, _ = old
    for verb in (["-k"], ["-e", "hold"], ["-e", "resume"], ["-e", "priority=3"], ["-q", "jobs"], ["--attach"],
                 ["-q", "wait"], ["-q", "why"]):
        said = {}
        for job_id in (held[0], held[-1]):  # past recent, and in it
            r = c.grun(*verb, str(job_id))
            said[job_id] = r.returncode, re.sub(rf"\b{job_id}\b", "N", (r.stdout + r.stderr).decode())
        assert said[held[0]] == said[held[-1]], verb
        assert "no such job" not in said[held[0]][1] and "killed" in said[held[0]][1], (verb, said)


def test_history_names_dependencies_reading_each_file_once(old):
    """A row's dependencies were looked up one by one in history: 1,000 rows waiting on jobs of 4 files read a file
    of 2,000 jobs per row (35 s for `grun -q history -c 1000`; now 0.2 s)."""
    c, held, waiting = old
    client = c.client()
    started = time.monotonic()
    rows = client.history(1000, None, "dep")
    took = time.monotonic() - started
    assert sorted(r["id"] for r in rows) == waiting
    assert {tuple(d) for r in rows for d in r["deps"]} == {("after", held[k % FILES * 1500 + k]) for k in range(1000)}
    assert took < 5.0, f"history of 1,000 rows with dependencies took {took:.1f} s"


def test_the_cores_docstring_lists_each_instruction_it_emits():
    """The master carries out what the core's steps say; its docstring is where a reader learns them ("history" was
    left out)."""
    emitted = set(re.findall(r'\.do(?:\.append\(| \+= \[)\("(\w+)"', inspect.getsource(MS)))
    listed = set(re.findall(r'^    \("(\w+)"', MS.__doc__, re.MULTILINE))
    assert {"history", "finished", "kill", "log"} <= emitted <= listed, emitted - listed


def test_the_live_jobs_come_a_page_a_call(old):
    """jobs() sent every live job's record in one reply (100,000: 2 s under the master's lock, +74 MB to it); a call
    now returns JOBS_PAGE at most, and Client.jobs (grun -q jobs) asks on from the last one's id."""
    c, _, _ = old
    client = c.client()
    live = [i for _ in range(3) for i in client.submit_many([job_spec("sleep 1", hold=True)] * 2000)]
    assert len(live) > JOBS_PAGE
    assert [j["id"] for j in client.call("jobs")] == live[:JOBS_PAGE]
    assert [j["id"] for j in client.jobs()] == live
    r = c.grun("-q", "jobs")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(live) + 1
    client.kill(live)


def test_a_busy_master_on_a_nodes_host_is_grun_load_not_outside_load():
    """A node counted the master's cpu on its host as other programs' (QA: a busy master stalled a one-host cluster);
    the master's registration reply names its process, and the node counts it as grun's (grun_cpus)."""
    with LocalCluster(nodes={"n": {"cpus": 1, "memory": 1000, "count_outside_load": True}}) as c:
        client = c.client()
        client.submit_many([job_spec("true", hold=True)] * 6000)
        stop, seen = threading.Event(), []

        def busy():
            while not stop.is_set():
                c.client().call("jobs", 0, JOBS_PAGE)
        threads = [threading.Thread(target=busy) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline and max(seen, default=0) < 0.25:
                time.sleep(0.3)
                seen.append(client.nodes()[0]["grun_cpus"])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert max(seen) >= 0.25, seen
