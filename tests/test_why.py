"""`grun why` (QA): root and admins find any user's job by name (a user only their own: test_munge), array tasks are
named as `grun -q jobs` names them (12.7, not their internal ids), and a request two constraints of which no one node
meets together is refused for that, not for a resource another node has."""
from __future__ import annotations

import pytest
from cluster import LocalCluster
from test_master_state import _state, _submit
from test_placement import job, nodes
from util import nowait, wait_for, wait_state

from grun.core.explain import explain, impossible

# ---- the core ------------------------------------------------------------------------------------

def test_a_constraint_unmet_is_said_of_the_nodes_that_meet_the_others():
    ns = nodes(("lab", 4, 8000, {"labels": {"os": "debian12"}}), ("gpu", 8, 8000, {"resources": {"gpu": 1}}))
    for params, text in (({"os": "debian12", "gpu": 1}, "of the nodes with os=debian12, none has gpu=1"),
                         ({"gpu": 1, "os": "debian12"}, "of the nodes with gpu=1, none has os=debian12")):
        assert impossible(job(1, params=params), ns) == text
    assert impossible(job(1, host="lab", params={"gpu": 1}), ns) == "of the nodes in hosts 'lab', none has gpu=1"
    assert impossible(job(1, host="*", params={"gpu": 1, "tpu": 1}), ns) == \
        "of the nodes in hosts '*' and with gpu=1, none has tpu=1"
    assert impossible(job(1, 8, params={"os": "debian12"}), ns) == \
        "of the nodes with os=debian12, none has 8 cpus; largest is 4"
    assert impossible(job(1, params={"tpu": 1}), ns) == "no node has tpu", "nothing narrowed: as before"
    assert impossible(job(1, 8, params={"gpu": 1}), ns) is None


def test_why_names_array_tasks_as_the_queue_shows_them():
    m = _state("a")  # (4 cpus: a task takes them all)
    array = _submit(m, 1.0, array="1-2", cpus=4)
    m.handle("schedule", 2.0)
    task = m.table.tasks[array][1]
    assert task != array, "a task has an internal id of its own"
    after, queued = _submit(m, 3.0, after=[f"{array}.1"]), _submit(m, 3.0, cpus=2)
    assert explain(m.table.jobs[after], m, 4.0).startswith(f"Job {after} is waiting for job {array}.1 to end (after).")
    assert explain(m.table.jobs[task], m, 4.0) == f"Job {array}.1 is dispatched on a."
    assert f"running job {array}.1)" in explain(m.table.jobs[queued], m, 4.0)


# ---- real daemons --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 2000, "labels": {"os": "debian12"}},
                             "n2": {"cpus": 1, "memory": 2000, "resources": {"gpu": 1}}}) as c:
        yield c


def _out(c: LocalCluster, *args: str) -> str:
    r = c.grun(*args)
    assert r.returncode == 0 and not r.stderr, (args, r)
    return r.stdout.decode()


def test_root_finds_any_users_job_by_name_its_own_first(cluster):
    client = cluster.client()  # (auth: none trusts every caller: the tests' root is root)
    spec = {"cmd": ["true"], "cwd": "/", "user": "bob", "uid": 1000, "gid": 1000, "hold": True, "name": "bobs"}
    bobs = client.submit_spec(spec)
    try:
        assert _out(cluster, "why", "bobs").startswith(f"Job {bobs} is held"), "bob's, as squeue -n shows it"
        mine = nowait(cluster, "--hold", "-j", "bobs", "true")
        assert _out(cluster, "why", "bobs").startswith(f"Job {mine} is held"), "a job of root's own comes first"
    finally:
        cluster.grun("-k", "-j", "bobs")
        cluster.grun("-k", str(bobs))
        wait_for(lambda: not client.jobs(), what="the jobs to end")


def test_root_finds_any_users_job_by_name_in_every_verb_and_an_ambiguous_name_is_an_error(cluster):
    """QA: `grun -q wait NAME`, `--attach NAME`, `-q history NAME` looked in root's own jobs only (`why NAME` in anyone's).
    Now each: the caller's own first, then anyone's if only one user has a live job of that name."""
    client = cluster.client()
    spec = {"cmd": ["true"], "cwd": "/", "gid": 1000, "hold": True, "name": "theirs"}
    bobs = client.submit_spec({**spec, "user": "bob", "uid": 1000})
    try:
        r = cluster.grun("-q", "history", "theirs")
        assert r.returncode == 1 and r.stderr.decode() == f"grun: job {bobs} has not finished (held): see grun -q jobs " \
            f"{bobs}\n", "bob's, found by its name"
        alices = client.submit_spec({**spec, "user": "alice", "uid": 1001})
        for verb in (["-q", "history"], ["-q", "wait"], ["--attach"], ["why"], ["-k", "-j"]):  # (each: one lookup)
            r = cluster.grun(*verb, "theirs")
            assert r.returncode == 1 and r.stderr.decode() == f"grun: jobs of 2 users are named 'theirs': give the id " \
                f"of one of them: {bobs} (bob), {alices} (alice)\n", (verb, r)
        mine = nowait(cluster, "--hold", "-j", "theirs", "true")
        assert _out(cluster, "why", "theirs").startswith(f"Job {mine} is held"), "a job of root's own comes first"
    finally:
        client.kill([j["id"] for j in client.jobs()])
        wait_for(lambda: not client.jobs(), what="the jobs to end")


def test_why_names_array_tasks_as_the_queue_shows_them_on_daemons(cluster):
    array = nowait(cluster, "-H", "n1", "--array", "1-2", "sleep", "60")
    try:
        wait_state(cluster, f"{array}.1", "running")
        after, queued = nowait(cluster, "--after", f"{array}.1", "true"), nowait(cluster, "-H", "n1", "true")
        assert f"waiting for job {array}.1 to end" in _out(cluster, "why", str(after))
        assert f"running job {array}.1)" in _out(cluster, "why", str(queued))
        assert _out(cluster, "why", f"{array}.1") == f"Job {array}.1 is running on n1.\n"
    finally:
        cluster.grun("-k", str(array))
        wait_for(lambda: not cluster.client().jobs(), what="the jobs to end")


def test_a_label_and_a_gpu_no_one_node_has_are_refused_for_that(cluster):
    for argv, text in ((["-p", "os=debian12", "-p", "gpu=1"], "of the nodes with os=debian12, none has gpu=1"),
                       (["-H", "n1", "-p", "gpu=1"], "of the nodes in hosts 'n1', none has gpu=1")):
        r = cluster.grun(*argv, "true")
        assert (r.returncode, r.stderr.decode()) == (1, f"grun: {text} (--force queues it anyway)\n"), argv
