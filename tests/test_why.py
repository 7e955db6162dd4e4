"""`grun why` (QA): root and admins find any user's job by name (a user only their own: test_munge)."""
from __future__ import annotations

import pytest
from cluster import LocalCluster
from util import nowait, wait_for

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
