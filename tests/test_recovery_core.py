"""The recovery decisions of the pure core (issue 3), without sockets: what a lost node's jobs become,
how a node's job list is reconciled with the table, which completions count, and that retried
submissions and replayed journals give the same table."""
from __future__ import annotations

import copy

import pytest

from grun.core import jobs as J
from grun.core.queue import LOST_EXIT, TOKEN_KEEP_SECS, JobTable


def _table(*nodes: str) -> JobTable:
    table = JobTable()
    for name in nodes:
        table.node_up(name, 4.0, 4000)
    return table


def _submit(table: JobTable, now: float = 1.0, **spec) -> dict:
    request = J.validate_spec({"cmd": ["true"], **spec})
    return table.apply(table.submit_record(request, now))


def _run_on(table: JobTable, job: dict, node: str, now: float = 2.0) -> dict:
    table.apply({"op": "dispatch", "id": job["id"], "node": node, "time": now})
    return table.apply({"op": "start", "id": job["id"], "node": node, "pid": 9, "time": now})


def test_a_lost_job_is_requeued_with_its_attempt_and_reason():
    table = _table("a", "b")
    job = _run_on(table, _submit(table), "a")
    rec = table.lost_record(job, 5.0, "node a lost")
    assert rec == {"op": "requeue", "id": job["id"], "node": "a", "reason": "node a lost", "time": 5.0}
    job = table.apply(rec)
    assert (job["state"], job["node"], job["lost_from"], job["requeues"], job["attempt"]) == ("queued", None, "a", 1, 1)
    assert job in list(table.pending)
    assert table.nodes["a"].used_cpus == 0 and job["id"] not in table.nodes["a"].jobs
    [dispatch] = table.schedule(6.0)
    assert table.apply(dispatch)["attempt"] == 2


def test_no_requeue_per_job_or_by_config_and_a_requested_kill_wins():
    table = _table("a")
    norequeue = _run_on(table, _submit(table, requeue=False), "a")
    plain = _run_on(table, _submit(table), "a")
    killed = _run_on(table, _submit(table), "a")
    table.apply({"op": "kill", "id": killed["id"], "signal": 15, "time": 3.0})

    lost = table.apply(table.lost_record(norequeue, 5.0, "gone"))
    assert (lost["state"], lost["exit"], lost["error"]) == (J.LOST, LOST_EXIT, "gone")
    assert table.lost_record(plain, 5.0, "gone", requeue=False)["result"]["status"] == J.LOST
    dead = table.apply(table.lost_record(killed, 5.0, "gone"))
    assert (dead["state"], dead["exit"]) == (J.KILLED, 143)


def test_reconcile_offers_missed_starts_declares_lost_and_names_stale_copies():
    table = _table("a", "b")
    dispatched = _submit(table)
    table.apply({"op": "dispatch", "id": dispatched["id"], "node": "a", "time": 2.0})
    running = _run_on(table, _submit(table), "a")
    vanished = _run_on(table, _submit(table), "a")
    moved = _run_on(table, _submit(table), "b")
    finished = _run_on(table, _submit(table), "a")
    table.apply(table.finish_record(finished["id"], {"exit_code": 0}, 3.0, node="a"))

    records, start, stale = table.reconcile(
        "a", running=[running["id"], moved["id"], finished["id"], 999], finished=[], now=4.0)
    assert [j["id"] for j in start] == [dispatched["id"]]
    assert records == [{"op": "requeue", "id": vanished["id"], "node": "a", "time": 4.0,
                        "reason": "node a came back without it"}]
    assert stale == sorted([moved["id"], finished["id"], 999])

    # a start confirmed after the node made its list is not a loss
    records, _, _ = table.reconcile("a", running=[running["id"]], finished=[], now=4.0,
                                    in_flight=lambda i: i == vanished["id"])
    assert records == []
    # a heartbeat (no finished list) declares nothing lost and offers nothing
    assert table.reconcile("a", running=[running["id"]], now=4.0) == ([], [], [])


def test_reconcile_records_a_start_the_master_missed():
    table = _table("a")
    job = _submit(table)
    table.apply({"op": "dispatch", "id": job["id"], "node": "a", "time": 2.0})
    records, start, stale = table.reconcile("a", running=[job["id"]], now=3.0)
    assert (records, start, stale) == ([{"op": "start", "id": job["id"], "node": "a", "pid": None, "time": 3.0}], [], [])
    assert table.apply(records[0])["state"] == J.RUNNING


def test_a_lost_node_that_returns_before_the_job_ran_elsewhere_keeps_it():
    table = _table("a", "b")
    job = _run_on(table, _submit(table, host="a"), "a")
    table.apply(table.lost_record(job, 5.0, "node a lost"))
    records, _, stale = table.reconcile("a", running=[job["id"]], finished=[], now=6.0)
    assert (records, stale) == ([{"op": "reclaim", "id": job["id"], "node": "a", "time": 6.0}], [])
    job = table.apply(records[0])
    assert (job["state"], job["node"], job["attempt"]) == ("running", "a", 1)
    assert job not in list(table.pending) and job["id"] in table.nodes["a"].jobs


def test_only_the_current_copy_finishes_a_job_and_only_once():
    table = _table("a", "b")
    job = _run_on(table, _submit(table), "a")
    table.apply(table.lost_record(job, 5.0, "node a lost"))
    _run_on(table, job, "b", now=6.0)
    assert table.finish_record(job["id"], {"exit_code": 1}, 7.0, node="a") is None  # the stale copy
    rec = table.finish_record(job["id"], {"exit_code": 0}, 8.0, node="b")
    done = table.apply(rec)
    assert (done["state"], done["exit"], done["node"], done["attempt"]) == ("done", 0, "b", 2)
    assert table.finish_record(job["id"], {"exit_code": 0}, 9.0, node="b") is None  # reported twice


def test_the_end_of_an_earlier_run_on_the_same_node_does_not_finish_the_job():
    table = _table("a")
    job = _run_on(table, _submit(table), "a")
    table.apply(table.lost_record(job, 5.0, "node a came back without it"))
    _run_on(table, job, "a", now=6.0)  # run again, on the same node
    assert table.finish_record(job["id"], {"exit_code": 1}, 7.0, node="a", attempt=1) is None
    done = table.apply(table.finish_record(job["id"], {"exit_code": 0}, 8.0, node="a", attempt=2))
    assert (done["state"], done["attempt"]) == ("done", 2)


def test_a_queued_lost_job_is_finished_by_the_copy_on_the_node_it_was_lost_from():
    table = _table("a", "b")
    job = _run_on(table, _submit(table), "a")
    table.apply(table.lost_record(job, 5.0, "node a lost"))
    assert table.finish_record(job["id"], {"exit_code": 0}, 6.0, node="b") is None  # b never had it
    done = table.apply(table.finish_record(job["id"], {"exit_code": 4}, 6.0, node="a"))
    assert (done["state"], done["exit"], done["node"]) == ("failed", 4, "a")
    assert not len(table.pending)


def test_a_token_names_its_job_after_it_finished_and_after_a_snapshot():
    table = _table("a")
    job = _run_on(table, _submit(table, token="tok-1"), "a")
    table.apply(table.finish_record(job["id"], {"exit_code": 0}, 10.0, node="a"))
    assert table.token_id("tok-1") == job["id"]
    restored = JobTable()
    restored.restore(copy.deepcopy(table.snapshot()))
    assert restored.token_id("tok-1") == job["id"]
    # forgotten once old enough
    other = _run_on(table, _submit(table, token="tok-2"), "a")
    table.apply(table.finish_record(other["id"], {"exit_code": 0}, 10.0 + TOKEN_KEEP_SECS + 1, node="a"))
    assert table.token_id("tok-1") is None and table.token_id("tok-2") == other["id"]


def test_replaying_the_records_gives_the_same_table():
    live, records = _table("a", "b"), []

    def do(rec):
        records.append(copy.deepcopy(rec))
        return live.apply(rec)

    jobs = [do(live.submit_record(J.validate_spec({"cmd": ["true"], "token": f"t{i}"}), 1.0)) for i in range(6)]
    for rec in live.schedule(2.0):
        do(rec)
    do({"op": "start", "id": jobs[0]["id"], "node": jobs[0]["node"], "pid": 1, "time": 3.0})
    do(live.lost_record(live.jobs[jobs[1]["id"]], 4.0, "lost"))
    do(live.finish_record(jobs[2]["id"], {"exit_code": 3}, 5.0, node=live.jobs[jobs[2]["id"]]["node"]))
    for rec in live.schedule(6.0):
        do(rec)

    replayed = _table("a", "b")
    for rec in records:
        replayed.apply(copy.deepcopy(rec))
    assert replayed.jobs == live.jobs
    assert [j["id"] for j in replayed.pending] == [j["id"] for j in live.pending]
    assert replayed.done_tokens == live.done_tokens and replayed.tokens == live.tokens


def test_a_node_record_needs_no_followup():
    """apply() of a "node" record returns the node's view, which a first registration journals."""
    table = JobTable()
    rec = table.node_record("a", 2.0, 1000)
    assert table.followups(rec, table.apply(rec)) == []


def test_queued_jobs_share_what_they_hold_alike_and_a_replay_keeps_it_equal():
    t = JobTable()
    env = {"PATH": "/bin", "HOME": "/root"}
    recs = []
    for i, e in enumerate([env, dict(env), {"PATH": "/usr/bin"}, {}]):
        request = J.validate_spec({"cmd": ["sleep", "1"], "env": e, "cwd": "/tmp"})
        recs.append(t.submit_record(request, now=float(i)))
        t.apply(recs[-1])
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
