"""Per-user, per-group and cluster-wide limits (issue 12, config `limits:`): jobs over a limit stay queued
while other users' jobs pass them, `grun why` says which limit, a reload applies new limits. The decisions
as pure code (grun.core.quotas through MasterState), then a real cluster."""
from __future__ import annotations

import random
import time

import pytest
import yaml
from cluster import LocalCluster
from util import nowait, wait_state

from grun.config import ConfigError, load_config
from grun.core.explain import explain, progress
from grun.core.master_state import MasterState
from grun.core.placement import MAX_MISSES_PER_PASS


def _master(limits: dict, cpus: float = 16, groups=None) -> MasterState:
    m = MasterState(random.Random(0), limits=limits)
    m.group_of = lambda user, gid: (groups or {}).get(gid, "staff")
    m.handle("register", {"name": "n", "uri": "u", "cpus": cpus, "memory": 64000, "resources": {"gpu": 8}}, 0.0)
    return m


def _submit(m: MasterState, user: str, n: int = 1, now: float = 1.0, gid: int = 100, **spec) -> list[int]:
    specs = [{"cmd": ["true"], "user": user, "uid": 1000, "gid": gid, "cpus": 2, **spec}] * n
    return m.handle("submit", m.requests(specs), None, now).reply


def _states(m: MasterState, ids) -> list[str]:
    return [m.table.jobs[i]["state"] for i in ids]


def test_a_user_at_a_limit_waits_while_other_users_pass_and_why_names_the_limit():
    m = _master({"user": {"cpus": 4}})
    alice, bob = _submit(m, "alice", 3), _submit(m, "bob", 1)
    m.handle("schedule", 2.0)
    assert _states(m, alice + bob) == ["dispatched", "dispatched", "queued", "dispatched"]
    text = explain(m.table.jobs[alice[2]], m, 3.0)
    assert "user alice already runs 4 of their 4 cpus" in text and "should start" not in text
    assert progress(m.table.jobs[alice[2]], m, 3.0) == "queued: 0 ahead; needs 2 cpus, 100 MB; user alice already " \
                                                      "runs 4 of their 4 cpus and this job needs 2"
    m.handle("finished", "n", [{"id": alice[0], "exit_code": 0}], 4.0)
    m.handle("schedule", 5.0)
    assert _states(m, alice[1:]) == ["dispatched", "dispatched"], "the running total went down as the job ended"


def test_named_scopes_replace_the_general_one_and_groups_and_all_count_together():
    m = _master({"user": {"jobs": 1}, "user.carol": {"jobs": 3}, "group.students": {"gpu": 2}, "all": {"jobs": 5}},
                groups={200: "students"})
    m.configure(fair_share=False)  # (which job the cluster's 5 go to: in id order, as this test counts them)
    dave, carol = _submit(m, "dave", 2), _submit(m, "carol", 4)
    s1, s2 = _submit(m, "s1", gid=200, params={"gpu": 2}), _submit(m, "s2", gid=200, params={"gpu": 1})
    joe = _submit(m, "joe")
    m.handle("schedule", 2.0)
    assert _states(m, dave + carol + s1 + s2 + joe) == ["dispatched", "queued"] + ["dispatched"] * 3 + [
        "queued", "dispatched", "queued", "queued"]
    for job_id, text in ((dave[1], "user dave already runs 1 of their 1 jobs"),
                         (carol[3], "user carol already runs 3 of their 3 jobs"),
                         (s2[0], "group students already runs 2 of its 2 gpu"),
                         (joe[0], "the cluster already runs 5 of its 5 jobs")):
        assert text in explain(m.table.jobs[job_id], m, 3.0)


def test_why_names_every_limit_a_job_waits_under_and_what_it_needs_and_status_a_resource_no_node_offers():
    m = _master({"user": {"jobs": 1}, "group.students": {"gpu": 2}, "all": {"memory": 500, "gpus": 1}},
                groups={200: "students"})
    first = _submit(m, "s1", gid=200, params={"gpu": 2}, memory=450)
    [job] = _submit(m, "s1", gid=200, params={"gpu": 1})
    m.handle("schedule", 2.0)
    assert _states(m, first + [job]) == ["dispatched", "queued"]
    assert "It waits under the config's limits: user s1 already runs 1 of their 1 jobs; group students already runs " \
           "2 of its 2 gpu and this job needs 1; the cluster already runs 450 of its 500 MB of memory and this job " \
           "needs 100." in explain(m.table.jobs[job], m, 3.0)
    assert m.table.quotas.unoffered(m.table.nodes.values()) == [
        "limits: no node offers 'gpus': it limits nothing; did you mean 'gpu'?"]


def test_an_array_places_tasks_only_up_to_the_limit_and_a_job_larger_than_the_limit_is_refused_unless_forced():
    m = _master({"user": {"cpus": 6}, "all": {"memory": 500}})
    [array] = _submit(m, "erin", array="1-10")
    alone = "user erin may run at most 6 cpus at once and this job alone asks for 8"
    with pytest.raises(ValueError, match=f"^{alone} \\(--force queues it anyway\\)$"):
        _submit(m, "erin", cpus=8)
    with pytest.raises(ValueError, match="the cluster may run at most 500 MB of memory at once and this job alone asks "
                                         "for 700 .--force"):
        _submit(m, "erin", memory=700)
    [big] = _submit(m, "erin", cpus=8, force=True)
    [job] = _submit(m, "erin")
    with pytest.raises(ValueError, match=f"job {job}: {alone} .add force=yes"):
        m.handle("edit", [job], {"cpus": 8}, 2.0)
    m.handle("edit", [big], {"priority": 7}, 2.0)  # a forced job: only what the edit asks is judged, as its user's
    with pytest.raises(ValueError, match=f"job {big}: user erin may run at most 6 cpus at once and this job alone"):
        m.handle("edit", [big], {"cpus": 7}, 2.0)
    m.handle("schedule", 2.0)
    assert sorted(j["task"] for j in m.table.jobs.values() if j.get("state") == "dispatched") == [1, 2, 3]
    assert alone in explain(m.table.jobs[big], m, 3.0)
    assert m.table.jobs[array]["state"] == "queued"


def test_a_suspended_job_holds_no_cpus_and_a_reload_applies_new_limits_at_once():
    m = _master({"user": {"cpus": 2}})
    a, b = _submit(m, "fay", 2)
    m.handle("schedule", 2.0)
    m.handle("started", "n", {"started": {str(a): 9}}, 2.0)
    m.handle("signalled", "suspend", "n", [a], 3.0)
    m.handle("schedule", 4.0)
    assert _states(m, [a, b]) == ["suspended", "dispatched"]
    c, d = _submit(m, "fay", 2, now=5.0)
    m.handle("schedule", 6.0)
    assert _states(m, [c, d]) == ["queued", "queued"]
    assert m.configure(limits={"user": {"cpus": 6}}) == {"limits": {"user": {"cpus": 6}}}
    m.handle("schedule", 7.0)
    assert _states(m, [c, d]) == ["dispatched", "dispatched"]
    assert m.configure(limits={})
    assert m.table.quotas.refusal(m.table.jobs[c]) is None


def test_the_totals_come_back_after_a_restart():
    m = _master({"user": {"jobs": 2}})
    records = list(m.table.snapshot()["nodes"])
    step = m.handle("submit", m.requests([{"cmd": ["true"], "user": "gus", "gid": 7}] * 3), None, 1.0)
    records += step.records + m.handle("schedule", 2.0).records
    again = MasterState(limits={"user": {"jobs": 2}})
    again.recover(None, records, 3.0)
    assert again.table.quotas.totals[("user", "gus")]["jobs"] == 2
    assert again.table.quotas.refusal(again.table.jobs[3]) == "user gus already runs 2 of their 2 jobs"


def test_a_node_described_again_counts_its_jobs_once_in_the_totals():
    """The totals are kept with the job table's own count of what each job holds on its node: a node that
    registers again with a new size or labels recounts its jobs, and a job's end takes all of it away."""
    m = _master({"user": {"jobs": 2}})
    a, b = _submit(m, "kim", 2, params={"gpu": 1})
    m.handle("schedule", 2.0)
    m.handle("register", {"name": "n", "uri": "u", "cpus": 8, "memory": 64000, "resources": {"gpu": 8},
                          "running": [a, b], "labels": {"rack": "r1"}}, 3.0)
    assert m.table.quotas.totals[("user", "kim")] == {"jobs": 2, "cpus": 4, "memory": 200, "gpu": 2}
    m.handle("finished", "n", [{"id": a, "exit_code": 0}, {"id": b, "exit_code": 0}], 4.0)
    assert m.table.quotas.totals[("user", "kim")] == {"jobs": 0, "cpus": 0, "memory": 0, "gpu": 0}


def test_jobs_held_back_by_a_limit_neither_cost_misses_nor_block_the_queue_behind_them():
    m = _master({"user": {"jobs": 1}}, cpus=4)
    blocked = _submit(m, "hal", MAX_MISSES_PER_PASS + 500)
    [other] = _submit(m, "ida")
    start = time.perf_counter()
    m.handle("schedule", 2.0)
    took = time.perf_counter() - start
    assert _states(m, [blocked[0], blocked[1], other]) == ["dispatched", "queued", "dispatched"]
    assert took < 1.0, f"a pass over {len(blocked)} held-back jobs took {took:.2f} s"


def test_a_bad_limit_is_one_config_error_with_file_and_line(tmp_path):
    conf = tmp_path / "grun.conf"
    for text, needle in (("limits:\n  user: {cpu: 64}\n", "user: unknown field 'cpu'; did you mean 'cpus'?"),
                         ("limits: {users: {cpus: 4}}\n", "scopes user, user.NAME, group, group.NAME or all"),
                         ("limits: {user: {memory: lots}}\n", "memory size"),
                         ("limits: {all: 8}\n", "a mapping like")):
        conf.write_text("services: queue\n" + text)
        with pytest.raises(ConfigError) as e:
            load_config(str(conf), environ={})
        assert str(e.value).startswith(f"{conf}:2: key 'limits': ") and needle in str(e.value), str(e.value)
    conf.write_text("limits: {user: {cpus: 64, jobs: 500, memory: 1T}, user.alice: {gpu: 1}, all: {io: 8}}\n")
    assert load_config(str(conf), environ={}).limits["user"] == {"cpus": 64, "jobs": 500, "memory": 1024 ** 2}


# ---- a real cluster -----------------------------------------------------------------------------

def test_limits_on_a_real_cluster_why_and_reload(tmp_path):
    limits, node = {"user": {"jobs": 1}, "all": {"memory": 3000}}, {"cpus": 4, "memory": 4000, "resources": {"gpu": 2}}
    with LocalCluster({"n": node}, master_extra={"limits": limits}) as c:
        r = c.grun("-m", "3500", "true")  # (the node has room for it, the limit never)
        refused = "grun: the cluster may run at most 3000 MB of memory at once and this job alone asks for 3500 " \
                  "(--force queues it anyway)\n"
        assert (r.returncode, r.stderr.decode()) == (1, refused)
        first = nowait(c, "sleep", "60")
        wait_state(c, first, "running")
        second = nowait(c, "true")
        other = c.client().submit_spec({"cmd": ["true"], "cwd": "/", "user": "nobody", "uid": 65534, "gid": 65534})
        assert wait_state(c, other, "done")["group"] != "root", "another user's job passes"
        why = c.grun("why", str(second))
        assert "user root already runs 1 of their 1 jobs" in why.stdout.decode(), why.stdout
        assert c.client().job(second)["state"] == "queued"
        path = c.configs["master"]
        with open(path) as f:
            cfg = yaml.safe_load(f)
        cfg["limits"] = {"user": {"jobs": 2}, "user.nobodyhere": {"jobs": 1}, "all": {"gpus": 1}}
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        r = c.grun("-d", "-r", "-C", path)
        typo = "limits: no node offers 'gpus': it limits nothing; did you mean 'gpu'?"
        assert r.returncode == 0 and f"grun: reload: {typo}\n" in r.stderr.decode(), r.stderr
        assert f"grun: reload: {path}:" in r.stderr.decode() and ": limits: no user 'nobodyhere' on this host" in \
            r.stderr.decode(), r.stderr  # (the master's log, as `grun -d -r` echoes it)
        assert f"warning: {typo}" in c.grun("-q", "status").stdout.decode()
        wait_state(c, second, "done")
        c.grun("-k", str(first))
