"""`grun why` (QA): root and admins find any user's job by name (a user only their own: test_munge), and array tasks
are named as `grun -q jobs` names them (12.7, not their internal ids)."""
from __future__ import annotations

import pytest
from cluster import LocalCluster
from test_master_state import _state, _submit
from util import nowait, wait_for, wait_state

from grun.core.explain import explain

# ---- the core ------------------------------------------------------------------------------------

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
