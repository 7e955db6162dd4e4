"""The recovery decisions of the pure core (issue 3), without sockets: what a lost node's jobs become,
how a node's job list is reconciled with the table, which completions count, and that retried
submissions and replayed journals give the same table."""
from __future__ import annotations

import copy
import random

import pytest

from grun.core import jobs as J
from grun.core.master_state import MasterState, Step
from grun.core.queue import LOST_EXIT, TOKEN_KEEP_SECS, JobTable


def _state(*nodes: str, **settings) -> MasterState:
    """Nodes up as a registration leaves them: described (the record applied) and up."""
    m = MasterState(random.Random(0), **settings)
    for name in nodes:
        m.table.apply(m.table.node_record(name, 4.0, 4000)).up = True
    return m


def _submit(m: MasterState, now: float = 1.0, **spec) -> dict:
    [job_id] = m.handle("submit", m.requests([{"cmd": ["true"], **spec}]), None, now).reply
    return m.table.jobs[job_id]


def _apply(m: MasterState, *records) -> list:
    """The records committed; returns the jobs they touched (finished ones too)."""
    m._commit(Step(), list(records))
    return [m.table.jobs.get(rec["id"]) or m.recent[rec["id"]] for rec in records]


def _run_on(m: MasterState, job: dict, node: str, now: float = 2.0) -> dict:
    return _apply(m, {"op": "dispatch", "id": job["id"], "node": node, "time": now},
                  {"op": "start", "id": job["id"], "node": node, "pid": 9, "time": now})[-1]


def test_a_lost_job_is_requeued_with_its_attempt_and_reason():
    m = _state("a", "b")
    job = _run_on(m, _submit(m), "a")
    rec = m.table.lost_record(job, 5.0, "node a lost")
    assert rec == {"op": "requeue", "id": job["id"], "node": "a", "reason": "node a lost", "time": 5.0}
    [job] = _apply(m, rec)
    assert (job["state"], job["node"], job["lost_from"], job["requeues"], job["attempt"]) == ("queued", None, "a", 1, 1)
    assert job in list(m.table.pending)
    assert m.table.nodes["a"].used_cpus == 0 and job["id"] not in m.table.nodes["a"].jobs
    [dispatch] = m.handle("schedule", 6.0).records
    assert m.table.jobs[job["id"]]["attempt"] == 2 and dispatch["op"] == "dispatch"


def test_no_requeue_per_job_or_by_config_and_a_requested_kill_wins():
    m = _state("a")
    norequeue = _run_on(m, _submit(m, requeue=False), "a")
    plain = _run_on(m, _submit(m), "a")
    killed = _run_on(m, _submit(m), "a")
    _apply(m, {"op": "kill", "id": killed["id"], "signal": 15, "time": 3.0})

    [lost] = _apply(m, m.table.lost_record(norequeue, 5.0, "gone"))
    assert (lost["state"], lost["exit"], lost["error"]) == (J.LOST, LOST_EXIT, "gone")
    [dead] = _apply(m, m.table.lost_record(killed, 5.0, "gone"))
    assert (dead["state"], dead["exit"]) == (J.KILLED, 143)
    assert m.table.lost_record(plain, 5.0, "gone", requeue=False)["result"]["status"] == J.LOST
    assert m.configure(requeue=False, colour="red") == {"requeue": False}  # unknown keys are ignored
    step = m.handle("sweep", 1000.0)  # node a silent since the start: its jobs are lost, not re-queued
    assert [(r["op"], r["id"], r["result"]["status"]) for r in step.records] == [("finish", plain["id"], J.LOST)]


def test_reconcile_offers_missed_starts_declares_lost_and_names_stale_copies():
    m = _state("a", "b")
    dispatched = _submit(m)
    _apply(m, {"op": "dispatch", "id": dispatched["id"], "node": "a", "time": 2.0})
    running = _run_on(m, _submit(m), "a")
    vanished = _run_on(m, _submit(m), "a")
    moved = _run_on(m, _submit(m), "b")
    finished = _run_on(m, _submit(m), "a")
    _apply(m, m.table.finish_record(finished["id"], {"exit_code": 0}, 3.0, node="a"))

    records, start, stale = m.table.reconcile(
        "a", running=[running["id"], moved["id"], finished["id"], 999], finished=[], now=4.0)
    assert [j["id"] for j in start] == [dispatched["id"]]
    assert records == [{"op": "requeue", "id": vanished["id"], "node": "a", "time": 4.0,
                        "reason": "node a came back without it"}]
    assert stale == sorted([moved["id"], finished["id"], 999])

    # a start confirmed after the node made its list is not a loss
    records, _, _ = m.table.reconcile("a", running=[running["id"]], finished=[], now=4.0,
                                in_flight={vanished["id"]})
    assert records == []
    # a heartbeat (no finished list) declares nothing lost and offers nothing
    assert m.table.reconcile("a", running=[running["id"]], now=4.0) == ([], [], [])


def test_reconcile_records_a_start_the_master_missed():
    m = _state("a")
    job = _submit(m)
    _apply(m, {"op": "dispatch", "id": job["id"], "node": "a", "time": 2.0})
    records, start, stale = m.table.reconcile("a", running=[job["id"]], now=3.0)
    assert (start, stale) == ([], []) and records == [{"op": "start", "id": job["id"], "node": "a", "pid": None,
                                                       "time": 3.0}]
    assert _apply(m, records[0])[0]["state"] == J.RUNNING


def test_a_lost_node_that_returns_before_the_job_ran_elsewhere_keeps_it():
    m = _state("a", "b")
    job = _run_on(m, _submit(m, host="a"), "a")
    _apply(m, m.table.lost_record(job, 5.0, "node a lost"))
    records, _, stale = m.table.reconcile("a", running=[job["id"]], finished=[], now=6.0)
    assert (records, stale) == ([{"op": "reclaim", "id": job["id"], "node": "a", "time": 6.0}], [])
    [job] = _apply(m, records[0])
    assert (job["state"], job["node"], job["attempt"]) == ("running", "a", 1)
    assert job not in list(m.table.pending) and job["id"] in m.table.nodes["a"].jobs
    [done] = _apply(m, {"op": "finish", "id": job["id"], "node": "a", "time": 9.0, "result": {"exit_code": 0}})
    assert done["queue_wait"] == 1.0, "its run is the first: its wait, from its submission (not its re-queue)"


def test_a_lost_node_that_returns_with_the_job_ended_keeps_it_and_the_job_runs_once():
    """A node silent past node_timeout registers again with the job ended there (its end reported right after):
    the job was re-queued, pinned there, and dispatched there again between the two calls, so it ran twice (QA:
    2 runs in 7). Its ended run is reclaimed at the registration; its end then finishes the job."""
    m = _state("a", "b")
    job = _run_on(m, _submit(m, host="a"), "a")
    _apply(m, m.table.lost_record(job, 5.0, "node a lost"))
    records, start, stale = m.table.reconcile("a", running=[], finished=[job["id"]], now=6.0)
    assert (records, start, stale) == ([{"op": "reclaim", "id": job["id"], "node": "a", "time": 6.0}], [], [])
    _apply(m, records[0])
    assert job not in list(m.table.pending)  # nothing to dispatch again
    step = m.handle("finished", "a", [{"id": job["id"], "exit_code": 0, "attempt": 1}], 7.0)
    [done] = [i[1] for i in step.do if i[0] == "finished"]
    assert (done["state"], done["node"], done["attempt"]) == ("done", "a", 1)
    moved = _run_on(m, _submit(m), "a")  # and not a job that runs elsewhere now: its ended copy there is nothing
    _apply(m, m.table.lost_record(moved, 8.0, "node a lost"))
    _run_on(m, moved, "b", now=9.0)
    assert m.table.reconcile("a", running=[], finished=[moved["id"]], now=10.0) == ([], [], [])


def test_only_the_current_copy_finishes_a_job_and_only_once():
    m = _state("a", "b")
    job = _run_on(m, _submit(m), "a")
    _apply(m, m.table.lost_record(job, 5.0, "node a lost"))
    _run_on(m, job, "b", now=6.0)
    assert m.table.finish_record(job["id"], {"exit_code": 1}, 7.0, node="a") is None  # the stale copy
    step = m.handle("finished", "b", [{"id": job["id"], "exit_code": 0}], 8.0)
    [done] = [i[1] for i in step.do if i[0] == "finished"]
    assert (done["state"], done["exit"], done["node"], done["attempt"]) == ("done", 0, "b", 2)
    again = m.handle("finished", "b", [{"id": job["id"], "exit_code": 0}], 9.0)  # reported twice
    assert (again.reply, again.records, again.do) == ([job["id"]], [], [])


def test_the_end_of_an_earlier_run_on_the_same_node_does_not_finish_the_job():
    m = _state("a")
    job = _run_on(m, _submit(m), "a")
    _apply(m, m.table.lost_record(job, 5.0, "node a came back without it"))
    _run_on(m, job, "a", now=6.0)  # run again, on the same node
    assert m.table.finish_record(job["id"], {"exit_code": 1}, 7.0, node="a", attempt=1) is None
    [done] = _apply(m, m.table.finish_record(job["id"], {"exit_code": 0}, 8.0, node="a", attempt=2))
    assert (done["state"], done["attempt"]) == ("done", 2)


def test_a_queued_lost_job_is_finished_by_the_copy_on_the_node_it_was_lost_from():
    m = _state("a", "b")
    job = _run_on(m, _submit(m), "a")
    _apply(m, m.table.lost_record(job, 5.0, "node a lost"))
    assert m.table.finish_record(job["id"], {"exit_code": 0}, 6.0, node="b") is None  # b never had it
    [done] = _apply(m, m.table.finish_record(job["id"], {"exit_code": 4}, 6.0, node="a"))
    assert (done["state"], done["exit"], done["node"]) == ("failed", 4, "a")
    assert not len(m.table.pending)


def test_a_token_names_its_job_after_it_finished_and_after_a_snapshot():
    m = _state("a")
    job = _run_on(m, _submit(m, token="tok-1"), "a")
    _apply(m, m.table.finish_record(job["id"], {"exit_code": 0}, 10.0, node="a"))
    assert m.table.token_id("tok-1") == job["id"]
    assert m.handle("submit", m.requests([{"cmd": ["true"], "token": "tok-1"}]), None, 11.0).reply == [job["id"]]
    restored = JobTable()
    restored.restore(copy.deepcopy(m.table.snapshot()))
    assert restored.token_id("tok-1") == job["id"]
    # forgotten once old enough
    other = _run_on(m, _submit(m, token="tok-2"), "a")
    _apply(m, m.table.finish_record(other["id"], {"exit_code": 0}, 10.0 + TOKEN_KEEP_SECS + 1, node="a"))
    assert m.table.token_id("tok-1") is None and m.table.token_id("tok-2") == other["id"]


def test_replaying_the_records_gives_the_same_table():
    """Every event's records, replayed through apply() as a restart does, give the same table."""
    live, records = _state("a", "b"), []

    def do(event, *args):
        step = live.handle(event, *args)
        records.extend(copy.deepcopy(step.records))
        return step

    ids = do("submit", live.requests([{"cmd": ["true"], "token": f"t{i}"} for i in range(6)]), None, 1.0).reply
    do("schedule", 2.0)
    node_of = {i: live.table.jobs[i]["node"] for i in ids}
    do("started", node_of[ids[0]], {"started": {str(ids[0]): 1}}, 3.0)
    do("heartbeat", node_of[ids[1]], {}, 3.0)
    do("kill", [ids[3]], 9, True, 3.5)
    do("finished", node_of[ids[2]], [{"id": ids[2], "exit_code": 3}], 5.0)
    do("submit", live.requests([{"cmd": ["sleep", "1"], "parent": ids[0]}]), None, 5.5)  # a nested grun lends
    for i in (ids[1], ids[4]):
        records.append(live.table.lost_record(live.table.jobs[i], 6.0, "lost"))
        _apply(live, copy.deepcopy(records[-1]))
    do("schedule", 7.0)

    replayed = _state("a", "b")
    for rec in records:
        replayed.table.apply(copy.deepcopy(rec))
    assert replayed.table.jobs == live.table.jobs and len(live.table.jobs) == 5
    assert [j["id"] for j in replayed.table.pending] == [j["id"] for j in live.table.pending]
    assert replayed.table.done_tokens == live.table.done_tokens and replayed.table.tokens == live.table.tokens
    for name in ("a", "b"):
        mine, theirs = live.table.nodes[name], replayed.table.nodes[name]
        assert (mine.used_cpus, mine.used_memory, mine.jobs) == (theirs.used_cpus, theirs.used_memory, theirs.jobs)


def test_a_node_is_journaled_when_new_or_changed_and_nothing_follows_it():
    m = MasterState()
    info = {"name": "a", "uri": "PYRO:n@a:1", "cpus": 2, "memory": 1000}
    step = m.handle("register", info, 1.0)
    assert step.records == [{"op": "node", "name": "a", "cpus": 2.0, "memory": 1000, "resources": {}, "labels": {},
                             "heartbeat": 0.0}]
    assert step.durable, "the registration is answered once its node record is on disk"
    assert m.handle("register", info, 2.0).records == []
    assert m.handle("register", dict(info, cpus=4), 3.0).records[0]["cpus"] == 4.0


def test_queued_jobs_share_what_they_hold_alike_and_a_replay_keeps_it_equal():
    m = MasterState()
    env = {"PATH": "/bin", "HOME": "/root"}
    recs = []
    for i, e in enumerate([env, dict(env), {"PATH": "/usr/bin"}, {}]):
        spec = {"cmd": ["sleep", "1"], "env": e, "cwd": "/tmp"}
        recs += m.handle("submit", m.requests([spec]), None, float(i)).records
    t = m.table
    jobs = [t.jobs[i] for i in (1, 2, 3, 4)]
    assert jobs[0]["env"] is jobs[1]["env"] and jobs[0]["env"] == env
    assert jobs[2]["env"] == {"PATH": "/usr/bin"} and jobs[2]["env"] is not jobs[0]["env"]
    assert jobs[3]["env"] == {}
    assert jobs[0]["cmd"] is jobs[3]["cmd"] == ["sleep", "1"]
    replayed = JobTable()
    for rec in copy.deepcopy(recs):
        replayed.apply(rec)
    assert replayed.jobs == t.jobs
    state = copy.deepcopy(t.snapshot())  # as it comes back from the disk: no shared objects
    assert len(state["envs"]) == 2 and [j["env"] for j in state["jobs"]] == [0, 0, 1, {}]
    restored = JobTable()
    restored.restore(state)
    assert restored.jobs == t.jobs and restored.jobs[1]["env"] is restored.jobs[2]["env"]
    state["jobs"][0]["env"] = 7
    with pytest.raises(ValueError, match="environment 7"):
        JobTable().restore(state)
